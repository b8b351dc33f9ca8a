"""
Single-use reply blocks: a ready header plus the payload keys that let
someone else reply through it (SPHINX.md §12).
"""

from nymprov.sphinx.curve import P
from nymprov.sphinx.errors import InvalidSURB
from nymprov.sphinx.header import create_header
from nymprov.sphinx.params import (
    DEFAULT_PAYLOAD_SIZE,
    HEADER_SIZE,
    NODE_ADDRESS_LENGTH,
    PAYLOAD_KEY_SIZE,
)
from nymprov.sphinx.payload import encapsulate

_MIN_SURB_SIZE = HEADER_SIZE + NODE_ADDRESS_LENGTH + PAYLOAD_KEY_SIZE
_KEYS_OFFSET = HEADER_SIZE + NODE_ADDRESS_LENGTH


class SURB:
    """
    A reply block. As in the crate, no secret stays with its creator: the
    payload keys travel inside it, so whoever holds it can reply once.
    """

    __slots__ = ("header", "first_hop_address", "payload_keys")

    def __init__(self, header: bytes, first_hop_address: bytes, payload_keys):
        self.header = header
        self.first_hop_address = first_hop_address
        self.payload_keys = list(payload_keys)

    @classmethod
    def create(cls, route, delays_ns, destination, initial_secret=None, final_padding=None):
        """
        A reply block whose packets travel ``route`` to ``destination``
        (normally the creator itself).

        :raises InvalidSURB: for an empty route or a delay count that
            differs from the hop count, as the crate does.
        :raises ValueError: for other malformed arguments (too long a route,
            bad secret or padding length).
        """
        if not route:
            raise InvalidSURB("tried to create SURB for an empty route")
        if len(route) != len(delays_ns):
            raise InvalidSURB("the route and the delays differ in length")
        header, payload_keys = create_header(initial_secret, route, delays_ns, destination, final_padding)
        return cls(header, route[0].address, payload_keys)

    def to_bytes(self) -> bytes:
        """:returns: header, first hop address, then each payload key."""
        return self.header + self.first_hop_address + b"".join(self.payload_keys)

    @classmethod
    def from_bytes(cls, data: bytes) -> "SURB":
        """
        :raises InvalidSURB: if ``data`` is too short, of a length that is
            not a whole number of keys, or has a non-canonical alpha (which
            every nymprov node would refuse).
        """
        if len(data) < _MIN_SURB_SIZE:
            raise InvalidSURB(f"not enough bytes provided to recover SURB: {len(data)}")
        if (len(data) - _KEYS_OFFSET) % PAYLOAD_KEY_SIZE:
            raise InvalidSURB("bytes of invalid length provided")
        data = bytes(data)
        if int.from_bytes(data[:32], "little") >= P:
            raise InvalidSURB("non-canonical alpha in SURB header")
        keys = [data[i : i + PAYLOAD_KEY_SIZE] for i in range(_KEYS_OFFSET, len(data), PAYLOAD_KEY_SIZE)]
        return cls(data[:HEADER_SIZE], data[HEADER_SIZE:_KEYS_OFFSET], keys)

    def use(self, message: bytes, payload_size: int = DEFAULT_PAYLOAD_SIZE):
        """
        Build the reply packet.

        :returns: ``(first_hop_address, packet)``: send ``packet`` there.
        :raises InvalidPayload: if the message does not fit.
        """
        return self.first_hop_address, self.header + encapsulate(message, self.payload_keys, payload_size)

    def __eq__(self, other):
        if not isinstance(other, SURB):
            return NotImplemented
        return self.to_bytes() == other.to_bytes()

    def __hash__(self):
        return hash(self.to_bytes())

    def __repr__(self):
        # The keys are secrets: show only the shape.
        return f"<SURB hops={len(self.payload_keys)}>"
