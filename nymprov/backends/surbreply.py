"""
Service messages: requests that carry reply blocks, split into fragments,
and answers sent back through those SURBs.

Codecs, :class:`Reassembler`, :func:`send_reply` and the
:class:`ReplyingBackend` base; the layout is
in ``doc/providers.md``.  Written by hand: it is nymprov's own format.
"""

import struct

from nacl.exceptions import CryptoError
from nacl.public import PrivateKey, PublicKey, SealedBox
from twisted.internet.defer import fail, maybeDeferred, succeed

from nymprov.errors import DeliveryError
from nymprov.sphinx import SURB, PacketSize, SphinxError
from nymprov.wire.envelope import encode_envelope

FRAGMENT_VERSION = 1
_FRAGMENT_HEADER = struct.Struct(">B16sHH")  # version, request id, index, count
FRAGMENT_HEADER_SIZE = _FRAGMENT_HEADER.size  # 21 bytes

#: Replies travel in regular packets (the requester's provider stores them
#: in its inbox, whose slots are sized for regular packets), each fragment
#: in an envelope without ACK (one byte).
REPLY_PLAINTEXT_SIZE = PacketSize.REGULAR.plaintext
REPLY_CHUNK_SIZE = REPLY_PLAINTEXT_SIZE - 1 - FRAGMENT_HEADER_SIZE

NO_REPLY_KEY = bytes(32)
SEAL_OVERHEAD = 48  # a SealedBox adds an ephemeral key and a MAC

_REQUEST_HEAD = struct.Struct(">32sHH")  # reply key, SURB count, SURB length

#: More fragments than this in one message is refused.
MAX_FRAGMENTS = 256


class MalformedRequest(DeliveryError):
    """A service message or its fragment cannot be decoded."""

    reason = "malformed_request"


class SurbRefused(DeliveryError):
    """A SURB is malformed or its first hop is not a first-layer mix node."""

    reason = "surb_refused"


class ServiceBusy(DeliveryError):
    """The backend is at one of its limits; the sender may retry later."""

    reason = "busy"


class MalformedReply(ValueError):
    """A reply (on the requester's side) cannot be decoded."""


# -- fragments -----------------------------------------------------------------


def encode_fragment(request_id, index, count, data):
    """:returns: one fragment's bytes."""
    return _FRAGMENT_HEADER.pack(FRAGMENT_VERSION, request_id, index, count) + data


def decode_fragment(message, error=MalformedRequest):
    """
    :returns: ``(request_id, index, count, data)``.
    :raises error: if ``message`` is not a fragment.
    """
    if len(message) < FRAGMENT_HEADER_SIZE:
        raise error("shorter than a fragment header")
    version, request_id, index, count = _FRAGMENT_HEADER.unpack_from(message)
    if version != FRAGMENT_VERSION:
        raise error(f"unknown fragment version {version}")
    if not 0 < count <= MAX_FRAGMENTS or index >= count:
        raise error(f"fragment {index} of {count}")
    return request_id, index, count, bytes(message[FRAGMENT_HEADER_SIZE:])


def split_fragments(request_id, data, chunk_size):
    """:returns: the fragments that carry ``data``, ``chunk_size`` bytes each."""
    chunks = [data[i : i + chunk_size] for i in range(0, len(data), chunk_size)] or [b""]
    if len(chunks) > MAX_FRAGMENTS:
        raise ValueError(f"{len(data)} bytes need more than {MAX_FRAGMENTS} fragments")
    return [encode_fragment(request_id, i, len(chunks), c) for i, c in enumerate(chunks)]


class Reassembler:
    """
    Joins fragments into whole messages, in memory, within bounds: at most
    ``max_pending`` incomplete messages of at most ``max_bytes`` each, each
    forgotten ``timeout`` seconds after its first fragment.

    :param clock: an ``IReactorTime``.
    """

    def __init__(self, clock, *, max_pending=64, max_bytes=256 * 1024, timeout=60.0):
        self._clock = clock
        self._max_pending = max_pending
        self._max_bytes = max_bytes
        self._timeout = timeout
        self._pending = {}  # request id -> (deadline, count, {index: data})

    def add(self, message):
        """
        Add one fragment.

        :returns: ``(request_id, data)`` when ``message`` completes a
            message, else ``None``.
        :raises MalformedRequest: for a bad fragment or one that disagrees
            with its siblings; ``ServiceBusy`` at the bounds.  Either way
            nothing is kept.
        """
        request_id, index, count, data = decode_fragment(message)
        if count == 1:
            return request_id, data
        now = self._clock.seconds()
        self._pending = {k: v for k, v in self._pending.items() if v[0] > now}
        entry = self._pending.get(request_id)
        if entry is None:
            if len(self._pending) >= self._max_pending:
                raise ServiceBusy("too many incomplete requests")
            entry = (now + self._timeout, count, {})
        deadline, expected, parts = entry
        if expected != count:
            raise MalformedRequest("fragment count differs from its siblings'")
        if index in parts:
            raise MalformedRequest("fragment received twice")
        if sum(map(len, parts.values())) + len(data) > self._max_bytes:
            raise ServiceBusy("request too large")
        parts = {**parts, index: data}
        if len(parts) < count:
            self._pending[request_id] = (deadline, count, parts)
            return None
        self._pending.pop(request_id, None)
        return request_id, b"".join(parts[i] for i in range(count))

    @property
    def pending_count(self):
        """How many messages are incomplete."""
        return len(self._pending)


# -- requests ------------------------------------------------------------------


class ServiceRequest:
    """
    A reassembled request: the reply blocks, an optional key to seal the
    reply to, and the backend-specific body.
    """

    __slots__ = ("request_id", "surbs", "reply_key", "body")

    def __init__(self, request_id, surbs, reply_key, body):
        self.request_id = request_id
        self.surbs = list(surbs)
        self.reply_key = reply_key
        self.body = body

    @property
    def reply_capacity(self):
        """Most bytes of reply body that the SURBs can carry."""
        room = len(self.surbs) * REPLY_CHUNK_SIZE
        if self.reply_key != NO_REPLY_KEY:
            room -= SEAL_OVERHEAD
        return max(room, 0)


def encode_request(surbs, body, reply_key=NO_REPLY_KEY):
    """
    :param surbs: :class:`nymprov.sphinx.SURB` objects, all of one length.
    :returns: the request bytes, before fragmenting.
    """
    blobs = [s.to_bytes() for s in surbs]
    length = len(blobs[0]) if blobs else 0
    if any(len(b) != length for b in blobs):
        raise ValueError("every SURB of a request must have the same number of hops")
    return _REQUEST_HEAD.pack(reply_key, len(blobs), length) + b"".join(blobs) + body


def decode_request(request_id, data, topology):
    """
    :returns: a :class:`ServiceRequest`.
    :raises MalformedRequest: if ``data`` is not a request.
    :raises SurbRefused: if a SURB is malformed or would make this node
        send anywhere but to a first-layer mix node.
    """
    if len(data) < _REQUEST_HEAD.size:
        raise MalformedRequest("shorter than a request header")
    reply_key, count, length = _REQUEST_HEAD.unpack_from(data)
    end = _REQUEST_HEAD.size + count * length
    if end > len(data):
        raise MalformedRequest("SURBs run past the end of the request")
    surbs = []
    for offset in range(_REQUEST_HEAD.size, end, length or 1):
        try:
            surb = SURB.from_bytes(data[offset : offset + length])
        except SphinxError as e:
            raise SurbRefused(str(e))
        if not topology.is_first_layer(surb.first_hop_address):
            raise SurbRefused("first hop is not a first-layer mix node")
        surbs.append(surb)
    return ServiceRequest(request_id, surbs, reply_key, bytes(data[end:]))


# -- replies -------------------------------------------------------------------


def reply_packets(request, body):
    """
    Seal ``body`` to the request's reply key (if any), split it across the
    request's SURBs and build one packet per fragment.

    :returns: a list of ``(first_hop, packet)``.
    :raises ValueError: if the body exceeds ``request.reply_capacity``.
    """
    if request.reply_key != NO_REPLY_KEY:
        body = SealedBox(PublicKey(request.reply_key)).encrypt(body)
    fragments = split_fragments(request.request_id, body, REPLY_CHUNK_SIZE)
    if len(fragments) > len(request.surbs):
        raise ValueError(f"{len(body)} bytes need {len(fragments)} SURBs, have {len(request.surbs)}")
    return [
        surb.use(encode_envelope(fragment), PacketSize.REGULAR.payload_size)
        for surb, fragment in zip(request.surbs, fragments)
    ]


def send_reply(sender, request, body):
    """
    Send ``body`` back through the request's SURBs with ``sender``.

    :returns: how many packets the sender's queues refused.
    """
    refused = 0
    for first_hop, packet in reply_packets(request, body):
        if not sender.send(first_hop, packet):
            refused += 1
    return refused


def open_reply(sealed, reply_private_key):
    """
    The requester's side: open a reply sealed to ``reply_private_key``
    (a ``nacl.public.PrivateKey``).

    :raises MalformedReply: if it does not open.
    """
    try:
        return SealedBox(reply_private_key).decrypt(sealed)
    except CryptoError:
        raise MalformedReply("the reply does not open with the reply key")


def new_reply_key():
    """:returns: a fresh ``nacl.public.PrivateKey`` for one request."""
    return PrivateKey.generate()


# -- a base for backends that answer -------------------------------------------


class ReplyingBackend:
    """
    The shared half of a backend that answers through SURBs: joins
    fragments, decodes the request, checks its SURBs, then hands it to
    :meth:`handle`.

    ``deliver`` fires once the fragment is kept (an incomplete request) or
    ``handle`` has accepted the whole request (then the node sends the
    message's SURB-ACK); it fails with a ``DeliveryError`` subclass,
    changing nothing, otherwise.

    :param sender: the ``IMixSender`` for replies.
    :param topology: the ``ITopology`` that SURB first hops are checked in.
    :param clock: an ``IReactorTime``.
    """

    def __init__(self, sender, topology, clock, reassembler=None):
        self.sender = sender
        self.topology = topology
        self.clock = clock
        self._reassembler = reassembler or Reassembler(clock)

    def deliver(self, message):
        """IProvider API"""
        try:
            whole = self._reassembler.add(message.body)
            if whole is None:
                return succeed(None)
            request = decode_request(whole[0], whole[1], self.topology)
        except DeliveryError as e:
            return fail(e)
        return maybeDeferred(self.handle, request)

    def handle(self, request):
        """
        Accept a whole :class:`ServiceRequest`; may return a Deferred.
        Raise a ``DeliveryError`` subclass to refuse it.
        """
        raise NotImplementedError

    def reply(self, request, body):
        """Send ``body`` back through ``request``'s SURBs."""
        return send_reply(self.sender, request, body)
