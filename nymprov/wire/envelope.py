"""
The plaintext envelope inside a Sphinx payload, which the final provider reads.

::

    envelope = header u8 || [ack_first_hop(32) || ack_packet(386)] || body
    header   = 0xE0 | flags   (bits 7..5 = 0b111: an envelope of version 1)
    flags    = bit 0: a SURB-ACK follows; bits 4..1 are reserved, zero

``body`` is opaque to the provider (the client's end-to-end ciphertext, a
service request, or an ACK's identifier).  ``ack_packet`` is an ACK-size
Sphinx packet that the provider sends to ``ack_first_hop`` (a first-layer
mix) once its backend has taken the message.

The node opens the envelope (:func:`open_final`) and keeps the ACK; the
backend gets a :class:`FinalMessage`.  The inbox stores its
:meth:`FinalMessage.inbox_form`, ``0xE0 || body``: the same envelope
without the ACK, which is all its client needs.

A payload whose first byte is below 0xE0 (including the empty payload) is
not an envelope: it is an opaque message, handed on as it is, so that
senders who do not use envelopes keep working.
"""

from dataclasses import dataclass

from nymprov.errors import DeliveryError
from nymprov.sphinx import PacketSize

ENVELOPE_MARK = 0xE0
_MARK_MASK = 0xE0
FLAG_ACK = 0x01
_RESERVED_FLAGS = 0x1E

ACK_FIRST_HOP_LENGTH = 32
ACK_PACKET_LENGTH = PacketSize.ACK.packet_size
ACK_LENGTH = ACK_FIRST_HOP_LENGTH + ACK_PACKET_LENGTH

#: Largest body that fits a regular packet together with a SURB-ACK.
MAX_BODY_WITH_ACK = PacketSize.REGULAR.plaintext - 1 - ACK_LENGTH
#: Largest body of an ACK packet's own envelope.
MAX_ACK_BODY = PacketSize.ACK.plaintext - 1


class MalformedEnvelope(DeliveryError):
    """A final-hop payload that claims to be an envelope is malformed."""

    reason = "malformed_envelope"


class BadAckHop(MalformedEnvelope):
    """The SURB-ACK's first hop is not a first-layer mix node."""

    reason = "bad_ack_hop"


@dataclass(frozen=True)
class Envelope:
    """
    :ivar bytes body: what the client gets.
    :ivar ack_first_hop: the 32-byte first hop of the SURB-ACK, or ``None``.
    :ivar ack_packet: the 386-byte SURB-ACK packet, or ``None``.
    """

    body: bytes
    ack_first_hop: bytes = None
    ack_packet: bytes = None

    @property
    def has_ack(self):
        """Whether a SURB-ACK travels with the body."""
        return self.ack_packet is not None


def encode_envelope(body, ack_first_hop=None, ack_packet=None):
    """
    :returns: the envelope bytes.
    :raises ValueError: if the ACK parts are of the wrong length, or only
        one of them is given.
    """
    if (ack_first_hop is None) != (ack_packet is None):
        raise ValueError("give both ack_first_hop and ack_packet, or neither")
    if ack_packet is None:
        return bytes([ENVELOPE_MARK]) + body
    if len(ack_first_hop) != ACK_FIRST_HOP_LENGTH or len(ack_packet) != ACK_PACKET_LENGTH:
        raise ValueError("an ACK is a 32-byte first hop and a 386-byte packet")
    return bytes([ENVELOPE_MARK | FLAG_ACK]) + ack_first_hop + ack_packet + body


def is_envelope(payload):
    """Whether ``payload`` claims to be an envelope (by its first byte)."""
    return len(payload) > 0 and payload[0] & _MARK_MASK == ENVELOPE_MARK


def decode_envelope(payload):
    """
    :param bytes payload: a final hop's plaintext that :func:`is_envelope`.
    :rtype: Envelope
    :raises MalformedEnvelope: if it is not a well-formed envelope.
    """
    return Envelope(*_split(payload))


def _split(payload):
    """:returns: ``(body, ack_first_hop, ack_packet)``, the last two ``None`` without an ACK."""
    if not is_envelope(payload):
        raise MalformedEnvelope("not an envelope")
    header = payload[0]
    if header & _RESERVED_FLAGS:
        raise MalformedEnvelope("reserved flag set")
    if not header & FLAG_ACK:
        return bytes(payload[1:]), None, None
    if len(payload) < 1 + ACK_LENGTH:
        raise MalformedEnvelope("too short for its SURB-ACK")
    first_hop = bytes(payload[1 : 1 + ACK_FIRST_HOP_LENGTH])
    packet = bytes(payload[1 + ACK_FIRST_HOP_LENGTH : 1 + ACK_LENGTH])
    return bytes(payload[1 + ACK_LENGTH :]), first_hop, packet


_MARK = bytes([ENVELOPE_MARK])


# Slots and no frozen: made once per packet, at twice the speed.
@dataclass(slots=True)
class FinalMessage:
    """
    What a backend is handed (``IProvider.deliver``): a message that
    reached its final hop here, out of its envelope.  Its SURB-ACK, if it
    had one, stays with the node.

    :ivar bytes destination: the 32-byte destination address of the final hop.
    :ivar bytes surb_id: the 16-byte SURB identifier of the final hop.
    :ivar bytes body: the envelope's body; for an opaque payload (not an
        envelope), the payload itself.
    :ivar bool enveloped: whether the payload came in an envelope.
    """

    destination: bytes
    surb_id: bytes
    body: bytes
    enveloped: bool = True

    def inbox_form(self):
        """
        What a client reads from its inbox: the envelope without its ACK
        (``0xE0 || body``), or an opaque payload as it came.
        """
        return _MARK + self.body if self.enveloped else self.body


def open_final(destination, surb_id, payload):
    """
    Open a final hop's payload.

    :returns: ``(message, ack)``: a :class:`FinalMessage`, and the SURB-ACK
        as ``(first_hop, packet)`` or ``None``.
    :raises MalformedEnvelope: if ``payload`` claims to be an envelope and
        is not a well-formed one.
    """
    if not is_envelope(payload):
        return FinalMessage(destination, surb_id, payload, False), None
    body, first_hop, packet = _split(payload)
    return FinalMessage(destination, surb_id, body), (None if packet is None else (first_hop, packet))
