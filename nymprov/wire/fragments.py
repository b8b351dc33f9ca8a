"""
Fragments: a message split into packet-sized pieces, and the one
:class:`Reassembler` that puts them back together.

::

    fragment = message_id(16) || index u16 || count u16 || chunk

Clients carry their end-to-end messages in fragments (``nymprov.client``);
service requests and their replies carry them behind a version byte
(``nymprov.backends.surbreply``).  Written by hand: nymprov's own format.
"""

import struct
from collections import OrderedDict
from dataclasses import dataclass

MESSAGE_ID_LENGTH = 16
_HEAD = struct.Struct(">16sHH")
FRAGMENT_HEADER_LENGTH = _HEAD.size  # 20
MAX_FRAGMENTS = 0xFFFF


class MalformedFragment(ValueError):
    """Bytes that are not a fragment, or disagree with their siblings."""

    reason = "malformed_fragment"


class ReassemblyFull(Exception):
    """A fragment that would take a reassembler past one of its bounds."""

    reason = "reassembly_full"


@dataclass(frozen=True)
class Fragment:
    """
    One piece of a message: ``message_id(16) || index u16 || count u16 || chunk``.
    """

    message_id: bytes
    index: int
    count: int
    chunk: bytes

    def to_bytes(self):
        """The fragment's encoding."""
        return _HEAD.pack(self.message_id, self.index, self.count) + self.chunk

    @classmethod
    def from_bytes(cls, data, max_fragments=MAX_FRAGMENTS):
        """:raises MalformedFragment: if ``data`` is not a fragment of at most ``max_fragments``."""
        if len(data) < FRAGMENT_HEADER_LENGTH:
            raise MalformedFragment("shorter than a fragment header")
        message_id, index, count = _HEAD.unpack_from(data)
        if not 0 < count <= max_fragments or index >= count:
            raise MalformedFragment(f"fragment {index} of {count}")
        return cls(message_id, index, count, bytes(data[FRAGMENT_HEADER_LENGTH:]))


def split_message(message_id, data, chunk_size, max_fragments=MAX_FRAGMENTS):
    """
    The fragments of ``data``; an empty message is one empty fragment.

    :raises ValueError: if ``data`` needs more than ``max_fragments``.
    """
    if len(message_id) != MESSAGE_ID_LENGTH or chunk_size < 1:
        raise ValueError("a 16-byte message id and a positive chunk size")
    count = max(1, -(-len(data) // chunk_size))
    if count > max_fragments:
        raise ValueError(f"{len(data)} bytes need more than {max_fragments} fragments")
    return [
        Fragment(message_id, i, count, bytes(data[i * chunk_size : (i + 1) * chunk_size]))
        for i in range(count)
    ]


class _Partial:
    __slots__ = ("count", "chunks", "size", "deadline")

    def __init__(self, count, deadline):
        self.count = count
        self.chunks = {}
        self.size = 0
        self.deadline = deadline


class Reassembler:
    """
    Collects fragments until a message is whole.  Copies of a fragment are
    ignored, also after their message was completed (its id is remembered).

    Memory is bounded by the caller's choice of bounds:

    :param int max_partial: incomplete messages kept at most.  At the bound
        a new message evicts the oldest incomplete one if ``evict_oldest``
        (a client: what its provider stored cannot be refused), else it is
        refused with :class:`ReassemblyFull` (a service: the refusal keeps
        its sender retransmitting).
    :param max_bytes: bytes of one message at most (``None``: no bound);
        a fragment beyond it raises :class:`ReassemblyFull`.
    :param int remember: ids of completed messages remembered.
    :param clock: an object with ``seconds()`` (an ``IReactorTime``), for
        ``timeout``.
    :param timeout: seconds after its first fragment that an incomplete
        message is forgotten (``None``: never).
    """

    def __init__(self, *, max_partial=1000, max_bytes=None, remember=100_000, clock=None, timeout=None,
                 evict_oldest=True):
        if timeout is not None and clock is None:
            raise ValueError("a timeout needs a clock")
        self._partial = OrderedDict()  # message_id -> _Partial, oldest first
        self._done = OrderedDict()  # message_id -> None, oldest first
        self._max_partial = max_partial
        self._max_bytes = max_bytes
        self._remember = remember
        self._clock = clock
        self._timeout = timeout
        self._evict_oldest = evict_oldest

    @property
    def partial_count(self):
        """How many messages are still missing fragments."""
        self._expire()
        return len(self._partial)

    def add(self, fragment):
        """
        :param Fragment fragment: the next fragment.
        :returns: the whole message once its last fragment arrived, else
            ``None`` (also for a copy of a fragment already seen).
        :raises MalformedFragment: if ``fragment`` disagrees with the
            fragments of its message seen before.
        :raises ReassemblyFull: at a bound (see above).  Either way nothing
            changes.
        """
        if fragment.message_id in self._done:
            return None
        self._expire()
        partial = self._partial.get(fragment.message_id)
        if partial is not None and partial.count != fragment.count:
            raise MalformedFragment("fragment count differs from its siblings'")
        if partial is not None and fragment.index in partial.chunks:
            return None
        size = (partial.size if partial is not None else 0) + len(fragment.chunk)
        if self._max_bytes is not None and size > self._max_bytes:
            raise ReassemblyFull("message too large")
        if fragment.count == 1:
            return self._completed(fragment.message_id, [fragment.chunk])
        if partial is None:
            if len(self._partial) >= self._max_partial and not self._evict_oldest:
                raise ReassemblyFull("too many incomplete messages")
            deadline = None if self._timeout is None else self._clock.seconds() + self._timeout
            partial = self._partial[fragment.message_id] = _Partial(fragment.count, deadline)
            while len(self._partial) > self._max_partial:
                self._partial.popitem(last=False)
        partial.chunks[fragment.index] = fragment.chunk
        partial.size = size
        if len(partial.chunks) < partial.count:
            return None
        del self._partial[fragment.message_id]
        return self._completed(fragment.message_id, [partial.chunks[i] for i in range(partial.count)])

    def forget(self, message_id):
        """Forget message ``message_id``, whole or not, so that it may come again."""
        self._partial.pop(message_id, None)
        self._done.pop(message_id, None)

    def _completed(self, message_id, chunks):
        if self._remember:
            self._done[message_id] = None
            while len(self._done) > self._remember:
                self._done.popitem(last=False)
        return b"".join(chunks)

    def _expire(self):
        # Deadlines grow with insertion order, so the expired are in front.
        if self._timeout is None:
            return
        now = self._clock.seconds()
        while self._partial:
            message_id, partial = next(iter(self._partial.items()))
            if partial.deadline > now:
                break
            del self._partial[message_id]

    def state(self):
        """A JSON-ready snapshot, for clients that keep it between runs."""
        return {
            "partial": [
                [mid.hex(), partial.count, {str(i): c.hex() for i, c in partial.chunks.items()}]
                for mid, partial in self._partial.items()
            ],
            "done": [mid.hex() for mid in self._done],
        }

    @classmethod
    def from_state(cls, state, **kwargs):
        """
        The reassembler of a :meth:`state` snapshot (incomplete messages
        get a fresh timeout).

        :raises MalformedFragment: if the snapshot is malformed.
        """
        reassembler = cls(**kwargs)
        try:
            for mid in state["done"]:
                reassembler._done[bytes.fromhex(mid)] = None
            for mid, count, chunks in state["partial"]:
                for index, chunk in chunks.items():
                    reassembler.add(Fragment(bytes.fromhex(mid), int(index), count, bytes.fromhex(chunk)))
        except (KeyError, TypeError, ValueError, struct.error, ReassemblyFull) as e:
            raise MalformedFragment(f"bad saved state: {e}") from None
        return reassembler
