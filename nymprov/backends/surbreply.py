"""
Service messages: requests that carry reply blocks, split into fragments,
and answers sent back through those SURBs.

Codecs, :func:`send_reply` and the :class:`ReplyingBackend` base; the
fragments are :mod:`nymprov.wire.fragments` behind a version byte.  The
layout is in ``doc/providers.md``.  Written by hand: it is nymprov's own
format.
"""

import struct

from nacl.bindings import crypto_box_SEALBYTES
from nacl.exceptions import CryptoError
import nacl.exceptions
from nacl.bindings import crypto_scalarmult
from nacl.public import PrivateKey, PublicKey, SealedBox
from twisted.internet.defer import fail, maybeDeferred, succeed

from nymprov.errors import DeliveryError
from nymprov.sphinx import SURB, PacketSize, SphinxError
from nymprov.wire.envelope import encode_envelope
from nymprov.wire.fragments import (
    FRAGMENT_HEADER_LENGTH,
    Fragment,
    MalformedFragment,
    Reassembler,
    ReassemblyFull,
    split_message,
)

FRAGMENT_VERSION = 1
_VERSION_BYTE = bytes([FRAGMENT_VERSION])
FRAGMENT_HEADER_SIZE = 1 + FRAGMENT_HEADER_LENGTH  # 21 bytes: the version, then a fragment's header

#: Replies travel in regular packets (the requester's provider stores them
#: in its inbox, whose slots are sized for regular packets), each fragment
#: in an envelope without ACK (one byte).
REPLY_PLAINTEXT_SIZE = PacketSize.REGULAR.plaintext
REPLY_CHUNK_SIZE = REPLY_PLAINTEXT_SIZE - 1 - FRAGMENT_HEADER_SIZE

NO_REPLY_KEY = bytes(32)

_REQUEST_HEAD = struct.Struct(">32sHH")  # reply key, SURB count, SURB length

#: More fragments than this in one service request or reply is refused.
MAX_SERVICE_FRAGMENTS = 256


class MalformedServiceRequest(DeliveryError):
    """A service request or its fragment cannot be decoded."""

    reason = "malformed_service_request"


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
    """:returns: one service fragment's bytes: the version, then the fragment."""
    return _VERSION_BYTE + Fragment(request_id, index, count, data).to_bytes()


def decode_fragment(message, error=MalformedServiceRequest):
    """
    :returns: the :class:`nymprov.wire.fragments.Fragment` in a service fragment.
    :raises error: if ``message`` is not one.
    """
    if not message or message[0] != FRAGMENT_VERSION:
        raise error(f"unknown fragment version {message[0] if message else None}")
    try:
        return Fragment.from_bytes(memoryview(message)[1:], MAX_SERVICE_FRAGMENTS)
    except MalformedFragment as e:
        raise error(str(e))


def split_fragments(request_id, data, chunk_size):
    """:returns: the service fragments that carry ``data``, ``chunk_size`` bytes each."""
    fragments = split_message(request_id, data, chunk_size, MAX_SERVICE_FRAGMENTS)
    return [_VERSION_BYTE + f.to_bytes() for f in fragments]


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
            room -= crypto_box_SEALBYTES
        return max(room, 0)


def encode_service_request(surbs, body, reply_key=NO_REPLY_KEY):
    """
    :param surbs: :class:`nymprov.sphinx.SURB` objects, all of one length.
    :returns: the request bytes, before fragmenting.
    """
    blobs = [s.to_bytes() for s in surbs]
    length = len(blobs[0]) if blobs else 0
    if any(len(b) != length for b in blobs):
        raise ValueError("every SURB of a request must have the same number of hops")
    return _REQUEST_HEAD.pack(reply_key, len(blobs), length) + b"".join(blobs) + body


#: Any fixed scalar: multiplying a low-order point by it gives the
#: all-zero point, which libsodium refuses.
_PROBE_SCALAR = bytes(range(1, 33))


def _usable_public_key(key):
    """Whether X25519 with ``key`` gives a shared secret (not low order)."""
    try:
        crypto_scalarmult(_PROBE_SCALAR, key)
    except (nacl.exceptions.RuntimeError, nacl.exceptions.TypeError):
        return False
    return True


def decode_service_request(request_id, data, topology):
    """
    :returns: a :class:`ServiceRequest`.
    :raises MalformedServiceRequest: if ``data`` is not a request.
    :raises SurbRefused: if a SURB is malformed or would make this node
        send anywhere but to a first-layer mix node.
    """
    if len(data) < _REQUEST_HEAD.size:
        raise MalformedServiceRequest("shorter than a request header")
    reply_key, count, length = _REQUEST_HEAD.unpack_from(data)
    if reply_key != NO_REPLY_KEY and not _usable_public_key(reply_key):
        raise MalformedServiceRequest("reply key is a low-order point")
    end = _REQUEST_HEAD.size + count * length
    if end > len(data):
        raise MalformedServiceRequest("SURBs run past the end of the request")
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


def service_reassembler(clock):
    """
    The bounds of a service's reassembly: 64 incomplete requests of 256 KiB
    at most, each forgotten 60 s after its first fragment; beyond them a
    fragment is refused (``ServiceBusy``), so its sender retransmits.
    """
    return Reassembler(max_partial=64, max_bytes=256 * 1024, remember=4096, clock=clock, timeout=60.0,
                       evict_oldest=False)


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
        self._reassembler = reassembler or service_reassembler(clock)

    def deliver(self, message):
        """IProvider API"""
        try:
            fragment = decode_fragment(message.body)
            whole = self._reassembler.add(fragment)
        except MalformedFragment as e:
            return fail(MalformedServiceRequest(str(e)))
        except ReassemblyFull as e:
            return fail(ServiceBusy(str(e)))
        except DeliveryError as e:
            return fail(e)
        if whole is None:
            return succeed(None)
        d = maybeDeferred(decode_service_request, fragment.message_id, whole, self.topology)
        d.addCallback(self.handle)
        # Not taken: a retransmitted copy must not pass for a duplicate.
        d.addErrback(self._not_taken, fragment.message_id)
        return d

    def _not_taken(self, failure, request_id):
        self._reassembler.forget(request_id)
        return failure

    def handle(self, request):
        """
        Accept a whole :class:`ServiceRequest`; may return a Deferred.
        Raise a ``DeliveryError`` subclass to refuse it.
        """
        raise NotImplementedError

    def reply(self, request, body):
        """Send ``body`` back through ``request``'s SURBs."""
        return send_reply(self.sender, request, body)
