"""
A node's own loops on a Clock: their routes, real Sphinx packets that come
back through the node core, counting, and the warning when too few return.
"""

import random

from nacl.signing import SigningKey
from twisted.internet.defer import succeed
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from nymprov.errors import PacketRefused
from nymprov.metrics import Counters
from nymprov.mixnode.fault import DroppingSender
from nymprov.node.core import NodeCore
from nymprov.netdoc import Epochs, NetworkDocument, sign_document
from nymprov.netdoc.fetch import DocumentHolder
from nymprov.node.loops import DocumentLoopRoute, NodeLoops, loop_route
from nymprov.sphinx import FinalHop, PacketSize, process_packet
from nymprov.storage.memory import MemoryStore
from nymprov.wire.frames import rotation_of_epoch
from tests.netdoc_support import FakeNode
from tests.test_client import make_network
from tests.test_node import RecordingSender, ScriptedProvider


def walk(keypairs, address, packet):
    """Unwrap ``packet`` hop by hop; :returns: ``(final address, last packet, hops)``."""
    hops = [address]
    while True:
        hop = process_packet(packet, keypairs[address])
        if isinstance(hop, FinalHop):
            return address, packet, hops
        address, packet = hop.next_address, hop.packet
        hops.append(address)


class LoopTests(SynchronousTestCase):

    def setUp(self):
        self.topology, self.keypairs = make_network()
        self.clock = Clock()
        self.counters = Counters()
        self.sender = RecordingSender()
        self.warnings = []

        def observe(event):
            if event.get("log_namespace", "").endswith("NodeLoops"):
                self.warnings.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

    def loops(self, own, sender=None, **kwargs):
        kwargs.setdefault("rate", 2.0)
        kwargs.setdefault("deadline", 5.0)
        kwargs.setdefault("window", 10.0)
        loops = NodeLoops(own.identity, loop_route(self.topology, own), sender or self.sender, self.clock,
                          self.counters, mean_delay=0.0, rng=random.Random(3), **kwargs)
        self.addCleanup(loops.stop)
        return loops

    def core(self, own, role):
        store = MemoryStore(self.clock)
        self.backend = ScriptedProvider(lambda: succeed(None))
        return NodeCore(self.keypairs[own.address], store, self.backend, RecordingSender(), self.topology,
                        self.clock, self.counters, role=role)

    def test_routes_cross_every_other_layer_and_come_home(self):
        """A provider's loops cross layers 1..3; a layer-2 mix's go 3, 1, then itself."""
        provider = self.topology.providers[0]
        route = loop_route(self.topology, provider)(random.Random(1))
        self.assertEqual([n.address for n in route],
                         [self.topology.layers[i][0].address for i in (1, 2, 3)] + [provider.address])
        mix = self.topology.layers[2][0]
        route = loop_route(self.topology, mix)(random.Random(1))
        self.assertEqual([n.address for n in route],
                         [self.topology.layers[i][0].address for i in (3, 1)] + [mix.address])
        one_layer, _ = make_network(layers=1)
        self.assertIsNone(loop_route(one_layer, one_layer.layers[1][0]))

    def test_provider_loop_returns_through_the_core_not_the_backend(self):
        """A provider's loop is a regular packet that comes back to it and is counted, not delivered."""
        provider = self.topology.providers[0]
        core = self.core(provider, "provider")
        core.loops = loops = self.loops(provider)
        loops.start()
        self.clock.pump([0.05] * 260)  # a window of warm-up, then 3 s
        self.assertGreater(len(self.sender.sent), 0)
        for first_hop, packet in self.sender.sent:
            self.assertEqual(len(packet), PacketSize.REGULAR.packet_size)
            final, last, hops = walk(self.keypairs, first_hop, packet)
            self.assertEqual(final, provider.address)
            self.assertEqual(len(hops), 4)
            self.successResultOf(core.receive_from_mix(last))
        self.assertEqual(self.counters.get("loops.returned"), len(self.sender.sent))
        self.assertEqual(self.counters.get("packets.delivered", "own_loop"), len(self.sender.sent))
        self.assertEqual(self.backend.calls, [])
        # A replay of a loop is not taken twice: it goes to the backend's
        # replay check and is refused there.
        self.failureResultOf(core.receive_from_mix(last))

    def test_mix_takes_its_own_loops_and_refuses_other_final_hops(self):
        """A mix accepts a final hop only if it is its own loop, once."""
        mix = self.topology.layers[2][0]
        core = self.core(mix, "mix")
        core.loops = loops = self.loops(mix)
        loops.start()
        self.clock.pump([0.05] * 240)
        first_hop, packet = self.sender.sent[0]
        final, last, _ = walk(self.keypairs, first_hop, packet)
        self.assertEqual(final, mix.address)
        self.successResultOf(core.receive_from_mix(last))
        self.assertEqual(self.counters.get("loops.returned"), 1)
        self.failureResultOf(core.receive_from_mix(last), PacketRefused)

    def test_a_dropping_node_raises_the_warning_a_healthy_one_does_not(self):
        """
        All loops back in time: info lines, no warning.  Every loop dropped
        by a node on the way (the mix node's fault switch): a warning at the
        end of the first window that judges them.
        """
        provider = self.topology.providers[0]
        core = self.core(provider, "provider")
        core.loops = loops = self.loops(provider)
        loops.start()
        returned = 0
        for _ in range(405):  # 40.5 s: a window of warm-up, then three judged
            self.clock.advance(0.1)
            for first_hop, packet in self.sender.sent[returned:]:
                self.successResultOf(core.receive_from_mix(walk(self.keypairs, first_hop, packet)[1]))
            returned = len(self.sender.sent)
        self.assertEqual([e["log_level"].name for e in self.warnings], ["info"] * 3)
        self.assertEqual(loops.last_share, 1.0)
        loops.stop()

        self.counters = Counters()
        dropping = DroppingSender(RecordingSender(), 1.0, self.counters)
        loops = self.loops(provider, sender=dropping)
        loops.start()
        self.warnings.clear()
        self.clock.pump([0.05] * 401)
        # Loops go out after a window; the next judges those sent in its
        # first 5 s (the deadline): all lost.
        [warning] = self.warnings
        self.assertEqual(warning["log_level"].name, "warn")
        self.assertEqual(warning["returned"], 0)
        self.assertEqual(self.counters.get("loops.warnings"), 1)
        self.assertEqual(self.counters.get("fault.dropped"), self.counters.get("loops.sent"))
        # A fault that starts with the loops shows within one window of
        # loops, 20 here; 35 leaves room for Poisson noise.
        self.assertLessEqual(warning["sent"], 35)

    def test_late_loops_are_counted_late(self):
        provider = self.topology.providers[0]
        loops = self.loops(provider)
        loops.start()
        self.clock.pump([0.05] * 220)
        sent = list(self.sender.sent)
        self.clock.pump([0.05] * 200)  # past the deadline and the first judging
        for first_hop, packet in sent:
            hop = process_packet(walk(self.keypairs, first_hop, packet)[1], self.keypairs[provider.address])
            self.assertTrue(loops.take(hop.destination, hop.surb_id))
        self.assertEqual(self.counters.get("loops.late"), len(sent))
        self.assertFalse(loops.take(b"\x00" * 32, b"\x00" * 16))


class RotationSender:
    """An IMixSender that keeps each packet with its frame's key-rotation byte."""

    def __init__(self):
        self.sent = []

    def send(self, address, packet, key_rotation=0):
        self.sent.append((address, packet, key_rotation))
        return True


class DocumentRouteTests(SynchronousTestCase):
    """Loops of a node that follows a directory, across a key rotation, on a Clock."""

    def setUp(self):
        directory = SigningKey.generate()
        self.nodes = [FakeNode("mix", 1), FakeNode("mix", 2), FakeNode("provider")]
        self.epochs = Epochs(10.0, 0.0)
        self.holder = DocumentHolder(directory.verify_key.encode(), Counters())
        for epoch in (3, 4):
            # Each node lists this epoch's key and the next one's, as nodes announce ahead.
            self.holder.accept(sign_document(NetworkDocument(
                directory=directory.verify_key.encode(), epoch=epoch, epoch_start=self.epochs.start_of(epoch),
                epoch_end=self.epochs.end_of(epoch), generated=1,
                parameters={"epoch_length": 10.0, "epoch_zero": 0.0, "expiry": 180.0, "grace": 2.5},
                nodes=tuple(n.descriptor(1, (epoch, epoch + 1)) for n in self.nodes)), directory))
        self.clock = Clock()
        self.clock.advance(35.0)  # in epoch 3

    def test_each_loop_takes_the_keys_of_the_epoch_it_is_sent_in(self):
        own = self.nodes[2]
        route = DocumentLoopRoute(self.holder, own.identity, self.epochs, self.clock)
        rng = random.Random(1)
        for epoch in (3, 4, 5):
            hops = route(rng)
            self.assertEqual([hop.public_key for hop in hops], [n.sphinx_key(epoch).public_bytes for n in self.nodes])
            self.assertEqual(route.rotation, rotation_of_epoch(epoch))
            self.clock.advance(10.0)
        # Epoch 6: no document lists keys for it; the loop is not sent.
        counters = Counters()
        # A seeded stream: an unseeded one at 1/s sent nothing in these 5 s
        # once in about 150 runs (e^-5), and the test failed.
        loops = NodeLoops(own.identity, route, RecordingSender(), self.clock, counters, rate=1.0, window=1.0,
                          rng=random.Random(3))
        self.addCleanup(loops.stop)
        loops.start()
        self.clock.pump([0.05] * 100)
        self.assertGreater(counters.get("loops.no_route"), 0)
        self.assertEqual(counters.get("loops.sent"), 0)

    def test_a_loop_sent_before_the_boundary_comes_back_after_it(self):
        """Built with epoch 3's keys, unwrapped after the boundary within the grace: returned."""
        own = self.nodes[2]
        sender = RotationSender()
        counters = Counters()
        loops = NodeLoops(own.identity, DocumentLoopRoute(self.holder, own.identity, self.epochs, self.clock),
                          sender, self.clock, counters, rate=5.0, window=1.0, deadline=5.0, mean_delay=0.0,
                          rng=random.Random(2))
        self.addCleanup(loops.stop)
        loops.start()
        self.clock.pump([0.05] * 98)  # to 39.9 s
        # The last loop sent in epoch 3, just before the boundary.
        _address, packet, rotation = sender.sent[-1]
        self.assertEqual(rotation, rotation_of_epoch(3))
        self.clock.advance(0.5)  # epoch 4: the nodes still hold epoch 3's keys (grace)
        self.assertEqual(self.epochs.number_at(self.clock.seconds()), 4)
        for node in self.nodes:
            hop = process_packet(packet, node.sphinx_key(3))
            if isinstance(hop, FinalHop):
                self.assertTrue(loops.take(hop.destination, hop.surb_id))
                break
            packet = hop.packet
        self.assertEqual(counters.get("loops.returned"), 1)
