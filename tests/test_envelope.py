"""
The plaintext envelope: its codec and how the node opens it (the node's
side of SURB-ACKs is in test_node_acks).
"""

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from nymprov.errors import DeliveryError
from nymprov.sphinx import PacketSize, encode_address
from nymprov.wire.envelope import (
    ACK_PACKET_LENGTH,
    MAX_BODY_WITH_ACK,
    Envelope,
    FinalMessage,
    MalformedEnvelope,
    decode_envelope,
    encode_envelope,
    is_envelope,
    open_final,
)

FIRST_LAYER = encode_address("127.0.0.1", 2001)
CLIENT = b"\x07" * 32
SURB_ID = b"\x01" * 16


def bodies():
    """Build bodies of any length up to what a regular packet holds."""
    return st.binary(max_size=MAX_BODY_WITH_ACK)


class EnvelopeCodecTests(SynchronousTestCase):
    """The envelope's encoding."""

    @settings(max_examples=100)
    @given(bodies(), st.booleans(), st.binary(min_size=32, max_size=32),
           st.binary(min_size=ACK_PACKET_LENGTH, max_size=ACK_PACKET_LENGTH))
    def test_round_trip(self, body, with_ack, hop, packet):
        """Whatever is encoded decodes to the same body and ACK."""
        ack = (hop, packet) if with_ack else (None, None)
        encoded = encode_envelope(body, *ack)
        self.assertTrue(is_envelope(encoded))
        self.assertEqual(decode_envelope(encoded), Envelope(body, *ack))


    def test_regular_packet_holds_the_largest_body_with_an_ack(self):
        """A full envelope is exactly a regular packet's plaintext."""
        encoded = encode_envelope(bytes(MAX_BODY_WITH_ACK), FIRST_LAYER, bytes(ACK_PACKET_LENGTH))
        self.assertEqual(len(encoded), PacketSize.REGULAR.plaintext)

    @settings(max_examples=200)
    @given(st.binary(max_size=600))
    def test_any_bytes_decode_or_raise_the_typed_error(self, data):
        """Arbitrary bytes either decode or raise MalformedEnvelope, a DeliveryError."""
        try:
            envelope = decode_envelope(data)
        except MalformedEnvelope as e:
            self.assertIsInstance(e, DeliveryError)
            self.assertEqual(e.reason, "malformed_envelope")
        else:
            self.assertTrue(is_envelope(data))
            self.assertTrue(data.endswith(envelope.body))

    def test_truncated_ack_is_refused(self):
        """An ACK flag without a whole ACK is malformed."""
        encoded = encode_envelope(b"", FIRST_LAYER, bytes(ACK_PACKET_LENGTH))
        self.assertRaises(MalformedEnvelope, decode_envelope, encoded[:-1])

    def test_reserved_flags_are_refused(self):
        """A reserved flag bit makes the envelope malformed."""
        self.assertRaises(MalformedEnvelope, decode_envelope, b"\xe2body")

    def test_opaque_messages_are_not_envelopes(self):
        """Empty payloads and payloads with a first byte below 0xE0 are not envelopes."""
        self.assertFalse(is_envelope(b""))
        self.assertFalse(is_envelope(b"hello"))
        self.assertRaises(MalformedEnvelope, decode_envelope, b"hello")

    def test_half_an_ack_is_a_caller_bug(self):
        """Encoding an ACK needs both parts, of the right lengths."""
        self.assertRaises(ValueError, encode_envelope, b"", FIRST_LAYER, None)
        self.assertRaises(ValueError, encode_envelope, b"", FIRST_LAYER, b"short")




class OpenFinalTests(SynchronousTestCase):
    """What the node hands a backend, and the ACK it keeps."""

    @settings(max_examples=100)
    @given(bodies(), st.booleans())
    def test_envelope_opened_ack_kept_apart(self, body, with_ack):
        """The backend's message is the body alone; the ACK comes back beside it."""
        ack = (FIRST_LAYER, bytes(range(256)) + bytes(ACK_PACKET_LENGTH - 256)) if with_ack else None
        message, kept = open_final(CLIENT, SURB_ID, encode_envelope(body, *(ack or (None, None))))
        self.assertEqual(message, FinalMessage(CLIENT, SURB_ID, body, enveloped=True))
        self.assertEqual(kept, ack)
        # What the inbox keeps is the envelope without its ACK.
        self.assertEqual(decode_envelope(message.inbox_form()), Envelope(body))

    @settings(max_examples=100)
    @given(st.binary(max_size=600).filter(lambda b: not is_envelope(b)))
    def test_opaque_payload_handed_on_as_it_is(self, payload):
        """A payload that is not an envelope is the message itself, with no ACK."""
        message, ack = open_final(CLIENT, SURB_ID, payload)
        self.assertEqual((message.body, message.enveloped, ack), (payload, False, None))
        self.assertEqual(message.inbox_form(), payload)

    def test_malformed_envelope_raises(self):
        """A payload that claims to be an envelope and is not one raises the typed error."""
        self.assertRaises(MalformedEnvelope, open_final, CLIENT, SURB_ID, b"\xe1too short for an ack")
