"""
The node's side of envelopes and SURB-ACKs: the node opens the envelope,
hands the backend the body and sends the ACK only once the backend's
``deliver`` has fired.  Real Sphinx packets carry real SURB-ACK packets,
which a first-layer mix can unwrap.
"""

import os

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from nymprov.errors import BackendTimeout, DeliveryError
from nymprov.interfaces import IProvider
from nymprov.metrics import Counters
from nymprov.node.core import NodeCore
from nymprov.sphinx import SURB, Destination, FinalHop, KeyPair, Node, PacketSize, build_packet, encode_address
from nymprov.sphinx import process_packet
from nymprov.storage.memory import MemoryStore
from nymprov.topology import StaticTopology
from nymprov.wire.envelope import BadAckHop, FinalMessage, MalformedEnvelope, decode_envelope, encode_envelope

from tests.test_node import RecordingSender

PROVIDER = encode_address("127.0.0.1", 1789)
FIRST_LAYER = encode_address("127.0.0.1", 1790)
LATER_LAYER = encode_address("127.0.0.1", 1791)
SENDER_HOME = Destination(b"\x05" * 32, b"\x06" * 16)
CLIENT = b"\x11" * 32


def real_ack(mix_key, ack_id, first_hop=FIRST_LAYER):
    """A real SURB-ACK: an ACK-size packet through one mix back to the sender's provider."""
    surb = SURB.create([Node(first_hop, mix_key.public_bytes)], [0], SENDER_HOME)
    return surb.use(encode_envelope(ack_id), PacketSize.ACK.payload_size)


def ack_id_of(packet, mix_key):
    """What the first-layer mix finds in an ACK packet: its identifier."""
    hop = process_packet(packet, mix_key)
    assert isinstance(hop, FinalHop), hop
    return decode_envelope(hop.message()).body


@implementer(IProvider)
class HeldBackend:
    """
    Takes a message when the test says so: ``answer(message)`` gives the
    Deferred that ``deliver`` returns (default: one the test fires).
    """

    name = "held"

    def __init__(self, answer=None):
        self.answer = answer or (lambda message: Deferred())
        self.messages = []
        self.results = []

    def deliver(self, message):
        self.messages.append(message)
        d = self.answer(message)
        self.results.append(d)
        return d


class AckFixture:
    """A provider's node core on a Clock, with a backend of the test's choosing."""

    def make_node(self, backend, sender=None, **options):
        self.clock = Clock()
        self.counters = Counters()
        self.keypair = KeyPair.generate()
        self.mix_key = KeyPair.generate()
        self.sender = sender or RecordingSender()
        self.backend = backend
        self.node = NodeCore(
            self.keypair, MemoryStore(self.clock), backend, self.sender,
            StaticTopology([FIRST_LAYER], [LATER_LAYER]), self.clock, self.counters, **options,
        )
        return self.node

    def packet(self, body, ack_id=None, first_hop=FIRST_LAYER):
        """A real final-hop packet for CLIENT whose envelope carries ``body`` and an ACK."""
        ack = real_ack(self.mix_key, ack_id, first_hop) if ack_id is not None else (None, None)
        return build_packet(encode_envelope(body, *ack), [Node(PROVIDER, self.keypair.public_bytes)], [0],
                            Destination(CLIENT, b"\x22" * 16))

    def acks(self):
        """The identifiers of the ACKs sent, in order; each went to the first-layer mix."""
        self.assertEqual({hop for hop, _ in self.sender.sent} - {FIRST_LAYER}, set())
        return [ack_id_of(packet, self.mix_key) for _, packet in self.sender.sent]


class AckAfterDeliverTests(AckFixture, SynchronousTestCase):
    """The ACK leaves after the backend took the message, and only then."""

    def test_backend_gets_the_body_without_ack(self):
        """The backend is handed the body alone; the ACK never reaches it."""
        self.make_node(HeldBackend(lambda m: succeed(None)))
        self.successResultOf(self.node.receive_from_mix(self.packet(b"the body", b"A" * 16)))
        [message] = self.backend.messages
        self.assertEqual(message, FinalMessage(CLIENT, b"\x22" * 16, b"the body", enveloped=True))
        self.assertEqual(self.acks(), [b"A" * 16])
        self.assertEqual(self.counters.get("acks.sent"), 1)

    def test_slow_deliver_acks_only_after(self):
        """While deliver has not fired no ACK leaves; when it fires, exactly one does."""
        self.make_node(HeldBackend())
        d = self.node.receive_from_mix(self.packet(b"slow", b"S" * 16))
        self.assertNoResult(d)
        self.clock.advance(29)
        self.assertEqual(self.sender.sent, [])
        self.backend.results[0].callback(None)
        self.successResultOf(d)
        self.assertEqual(self.acks(), [b"S" * 16])

    def test_overdue_deliver_acks_when_it_succeeds(self):
        """
        A delivery past its deadline is not cancelled: when the backend
        takes the message at last, exactly one ACK leaves.
        """
        self.make_node(HeldBackend())
        d = self.node.receive_from_mix(self.packet(b"late", b"L" * 16))
        self.clock.advance(120)
        self.assertEqual(self.sender.sent, [])
        self.assertEqual(self.counters.get("backend.held.overdue"), 1)
        self.backend.results[0].callback(None)
        self.successResultOf(d)
        self.assertEqual(self.acks(), [b"L" * 16])
        self.assertEqual(self.counters.get("packets.dropped", "backend_timeout"), 0)

    def test_ack_budget_refills(self):
        """
        Past the ACK budget of a destination the message is still taken and
        its ACK dropped, counted; the budget refills with time.
        """
        self.make_node(HeldBackend(lambda m: succeed(None)), ack_rate=(1.0, 1))
        for ack_id in (b"1" * 16, b"2" * 16):
            self.successResultOf(self.node.receive_from_mix(self.packet(b"m", ack_id)))
        self.clock.advance(1)
        self.successResultOf(self.node.receive_from_mix(self.packet(b"m", b"3" * 16)))
        self.assertEqual(self.acks(), [b"1" * 16, b"3" * 16])
        self.assertEqual(self.counters.get("packets.delivered"), 3)
        self.assertEqual(self.counters.get("acks.dropped", "rate_limited"), 1)

    def test_failed_deliver_sends_no_ack(self):
        """A typed refusal, a crash and a delivery given up at stop each send no ACK."""
        refusals = iter([
            lambda: fail(DeliveryError("refused")),
            lambda: fail(RuntimeError("backend bug")),
            Deferred,
        ])
        self.make_node(HeldBackend(lambda m: next(refusals)()))
        self.failureResultOf(self.node.receive_from_mix(self.packet(b"1", b"1" * 16)), DeliveryError)
        self.failureResultOf(self.node.receive_from_mix(self.packet(b"2", b"2" * 16)), RuntimeError)
        self.flushLoggedErrors(RuntimeError)
        hung = self.node.receive_from_mix(self.packet(b"3", b"3" * 16))
        self.clock.advance(31)
        self.node.stop()
        self.node.drain(self.clock.seconds() + 1)
        self.clock.advance(1)
        self.failureResultOf(hung, BackendTimeout)
        self.assertEqual(self.sender.sent, [])
        self.assertEqual(self.counters.get("acks.sent"), 0)
        self.assertEqual(self.counters.get("packets.delivered"), 0)

    def test_raising_deliver_sends_no_ack(self):
        """A deliver that raises instead of returning a Deferred sends no ACK."""
        def explode(message):
            raise DeliveryError("raised")

        self.make_node(HeldBackend(explode))
        self.failureResultOf(self.node.receive_from_mix(self.packet(b"x", b"x" * 16)), DeliveryError)
        self.assertEqual(self.sender.sent, [])

    def test_ack_count_equals_accepted_count(self):
        """Of many messages, some taken at once, some later, some refused: one ACK per taken one."""
        self.make_node(HeldBackend())
        fates = [("take", "later", "refuse")[i % 3] for i in range(60)]
        ids = [os.urandom(16) for _ in fates]
        results = [self.node.receive_from_mix(self.packet(fate.encode(), ack_id))
                   for fate, ack_id in zip(fates, ids)]
        for fate, d in zip(fates, self.backend.results):
            if fate == "take":
                d.callback(None)
            elif fate == "refuse":
                d.errback(DeliveryError("no"))
        self.assertEqual(sorted(self.acks()), sorted(i for f, i in zip(fates, ids) if f == "take"))
        for fate, d in reversed(list(zip(fates, self.backend.results))):
            if fate == "later":
                d.callback(None)
        for d in results:
            d.addErrback(lambda f: f.trap(DeliveryError))
        accepted = [i for f, i in zip(fates, ids) if f != "refuse"]
        self.assertEqual(sorted(self.acks()), sorted(accepted))
        self.assertEqual(self.counters.get("acks.sent"), len(accepted))
        self.assertEqual(self.counters.get("packets.delivered"), len(accepted))

    def test_full_sender_queue_drops_the_ack_not_the_message(self):
        """An ACK the sender refuses is counted; the message stays taken."""
        self.make_node(HeldBackend(lambda m: succeed(None)), sender=RecordingSender(accept=False))
        self.successResultOf(self.node.receive_from_mix(self.packet(b"kept", b"k" * 16)))
        self.assertEqual(self.counters.get("packets.delivered"), 1)
        self.assertEqual(self.counters.get("acks.dropped", "queue_full"), 1)


class EnvelopeRefusalTests(AckFixture, SynchronousTestCase):
    """A bad envelope or an ACK that would go astray never reaches the backend."""

    def test_ack_first_hop_must_be_first_layer(self):
        """An ACK through a later-layer mix is refused before the backend sees the message."""
        self.make_node(HeldBackend(lambda m: succeed(None)))
        d = self.node.receive_from_mix(self.packet(b"x", b"x" * 16, first_hop=LATER_LAYER))
        self.assertEqual(self.failureResultOf(d, BadAckHop).value.reason, "bad_ack_hop")
        self.assertEqual((self.backend.messages, self.sender.sent), ([], []))
        self.assertEqual(self.counters.get("packets.dropped", "bad_ack_hop"), 1)

    def test_malformed_envelope(self):
        """A payload that claims to be an envelope and is not one is refused and counted."""
        self.make_node(HeldBackend(lambda m: succeed(None)))
        packet = build_packet(b"\xe1too short for an ack", [Node(PROVIDER, self.keypair.public_bytes)], [0],
                              Destination(CLIENT, b"\x22" * 16))
        self.failureResultOf(self.node.receive_from_mix(packet), MalformedEnvelope)
        self.assertEqual(self.backend.messages, [])
        self.assertEqual(self.counters.get("packets.dropped", "malformed_envelope"), 1)

    def test_opaque_payload(self):
        """A payload that is no envelope reaches the backend as it is, with no ACK."""
        self.make_node(HeldBackend(lambda m: succeed(None)))
        packet = build_packet(b"plain", [Node(PROVIDER, self.keypair.public_bytes)], [0],
                              Destination(CLIENT, b"\x22" * 16))
        self.successResultOf(self.node.receive_from_mix(packet))
        [message] = self.backend.messages
        self.assertEqual((message.body, message.enveloped, message.inbox_form()), (b"plain", False, b"plain"))
        self.assertEqual(self.sender.sent, [])
