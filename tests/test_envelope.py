"""
The plaintext envelope (codec) and the inbox backend's side of SURB-ACKs.
"""

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from nymprov.backends.inbox import BadAckHop, InboxProvider
from nymprov.errors import DeliveryError
from nymprov.interfaces import IMixSender, IProvider
from nymprov.sphinx import PacketSize, encode_address
from nymprov.storage.memory import MemoryStore
from nymprov.topology import StaticTopology
from nymprov.wire.envelope import (
    ACK_PACKET_LENGTH,
    MAX_BODY_WITH_ACK,
    Envelope,
    MalformedEnvelope,
    decode_envelope,
    encode_envelope,
    is_envelope,
)

FIRST_LAYER = encode_address("127.0.0.1", 2001)
LATER_LAYER = encode_address("127.0.0.1", 2002)
CLIENT = b"\x07" * 32


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

    @settings(max_examples=100)
    @given(bodies())
    def test_stored_form_is_an_envelope_without_ack(self, body):
        """What the inbox stores decodes to the body alone."""
        encoded = encode_envelope(body, FIRST_LAYER, bytes(ACK_PACKET_LENGTH))
        stored = decode_envelope(encoded).stored()
        self.assertEqual(decode_envelope(stored), Envelope(body))

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


@implementer(IMixSender)
class RecordingSender:
    """An IMixSender that records what it is asked to send."""

    def __init__(self, accept=True):
        self.sent = []
        self.accept = accept

    def send(self, address, packet):
        """IMixSender API"""
        if self.accept:
            self.sent.append((address, packet))
        return self.accept


class HeldStore(MemoryStore):
    """A memory store whose appends commit only when the test says so."""

    def __init__(self, clock):
        MemoryStore.__init__(self, clock)
        self.held = []

    def append(self, address, message, now):
        d = Deferred()
        self.held.append((d, address, message, now))
        return d

    def commit(self):
        """Commit every held append, in order."""
        held, self.held = self.held, []
        for d, address, message, now in held:
            MemoryStore.append(self, address, message, now).chainDeferred(d)


class InboxAckTests(SynchronousTestCase):
    """The inbox backend with a sender and a topology."""

    def setUp(self):
        self.clock = Clock()
        self.store = HeldStore(self.clock)
        self.successResultOf(self.store.register(CLIENT, b"\x00" * 32, 0))
        self.sender = RecordingSender()
        self.provider = InboxProvider(self.store, self.clock, self.sender,
                                      StaticTopology([FIRST_LAYER], [LATER_LAYER]))
        self.ack_packet = bytes(range(256)) + bytes(ACK_PACKET_LENGTH - 256)

    def stored(self):
        """The messages in the client's inbox."""
        _, messages = self.successResultOf(self.store.lease(CLIENT, 100, 0, 60))
        return [m for _, m in messages]

    def test_provides_iprovider(self):
        """InboxProvider implements IProvider."""
        verifyObject(IProvider, self.provider)

    def test_ack_is_sent_only_after_commit(self):
        """The ACK leaves once the store committed the body, not before."""
        d = self.provider.deliver(CLIENT, bytes(16), encode_envelope(b"body", FIRST_LAYER, self.ack_packet))
        self.assertNoResult(d)
        self.assertEqual(self.sender.sent, [])
        self.store.commit()
        self.successResultOf(d)
        self.assertEqual(self.sender.sent, [(FIRST_LAYER, self.ack_packet)])
        self.assertEqual(self.stored(), [b"\xe0body"])
        self.assertEqual(self.provider.acks_sent, 1)

    def test_refused_message_sends_no_ack(self):
        """A message the store refuses (unknown client) gets no ACK."""
        d = self.provider.deliver(b"\x09" * 32, bytes(16), encode_envelope(b"x", FIRST_LAYER, self.ack_packet))
        self.store.commit()
        self.failureResultOf(d, DeliveryError)
        self.assertEqual(self.sender.sent, [])

    def test_ack_first_hop_must_be_first_layer(self):
        """An ACK whose first hop is not a first-layer mix is refused; nothing is stored."""
        d = self.provider.deliver(CLIENT, bytes(16), encode_envelope(b"x", LATER_LAYER, self.ack_packet))
        failure = self.failureResultOf(d, BadAckHop)
        self.assertEqual(failure.value.reason, "bad_ack_hop")
        self.assertEqual(self.store.held, [])
        self.assertEqual(self.sender.sent, [])

    def test_malformed_envelope_stores_nothing(self):
        """A malformed envelope fails with MalformedEnvelope and stores nothing."""
        d = self.provider.deliver(CLIENT, bytes(16), b"\xe1too short for an ack")
        self.failureResultOf(d, MalformedEnvelope)
        self.assertEqual(self.store.held, [])

    def test_opaque_message_is_stored_as_it_is(self):
        """A payload that is not an envelope is stored unchanged."""
        d = self.provider.deliver(CLIENT, bytes(16), b"plain")
        self.store.commit()
        self.successResultOf(d)
        self.assertEqual(self.stored(), [b"plain"])

    def test_full_sender_queue_keeps_the_message(self):
        """If the sender refuses the ACK the message stays stored and the drop is counted."""
        self.sender.accept = False
        d = self.provider.deliver(CLIENT, bytes(16), encode_envelope(b"kept", FIRST_LAYER, self.ack_packet))
        self.store.commit()
        self.successResultOf(d)
        self.assertEqual(self.stored(), [b"\xe0kept"])
        self.assertEqual(self.provider.acks_dropped, 1)

    def test_without_sender_acks_are_not_sent(self):
        """Built with two arguments the backend stores envelopes and sends nothing."""
        provider = InboxProvider(self.store, self.clock)
        d = provider.deliver(CLIENT, bytes(16), encode_envelope(b"b", FIRST_LAYER, self.ack_packet))
        self.store.commit()
        self.successResultOf(d)
        self.assertEqual(self.stored(), [b"\xe0b"])
        self.assertEqual(provider.acks_sent, 0)
