"""The client's topology that follows the epochs of the directory's documents."""

from nacl.signing import SigningKey
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from nymprov.client.network import LiveTopology, NoNetwork
from nymprov.client.routes import Router
from nymprov.metrics import Counters
from nymprov.netdoc import Epochs, NetworkDocument, sign_document
from nymprov.netdoc.fetch import DocumentHolder

from tests.netdoc_support import FakeNode


class LiveTopologyTests(SynchronousTestCase):
    def setUp(self):
        self.key = SigningKey.generate()
        self.clock = Clock()
        self.holder = DocumentHolder(self.key.verify_key.encode(), Counters())
        self.nodes = [FakeNode("mix", 1), FakeNode("mix", 2), FakeNode("provider")]
        self.live = LiveTopology(self.holder, Epochs(10.0), self.clock, lead=1.0)

    def publish(self, epoch):
        document = NetworkDocument(
            directory=self.key.verify_key.encode(), epoch=epoch, epoch_start=epoch * 10.0,
            epoch_end=(epoch + 1) * 10.0, generated=epoch * 10,
            parameters={"epoch_length": 10.0, "epoch_zero": 0.0, "expiry": 30.0, "grace": 2.0},
            nodes=tuple(n.descriptor(0, epochs=(epoch, epoch + 1)) for n in self.nodes),
        )
        self.holder.accept(sign_document(document, self.key))

    def key_used(self, node):
        return self.live.by_identity(node.identity).sphinx_key

    def test_keys_of_the_epoch_a_packet_is_processed_in(self):
        """Mid-epoch the epoch's keys; within the lead of the boundary the next epoch's."""
        with self.assertRaises(NoNetwork):
            self.live.current()
        self.publish(3)
        self.clock.advance(35.0)
        self.assertEqual(self.key_used(self.nodes[0]), self.nodes[0].sphinx_key(3).public_bytes)
        self.clock.advance(4.5)  # 39.5: a packet built now lands in epoch 4
        self.assertEqual(self.key_used(self.nodes[0]), self.nodes[0].sphinx_key(4).public_bytes)
        self.assertEqual(self.live.usable_until(3), 42.0)
        # A router built on it takes every key of a packet from one epoch.
        router = Router(self.live, self.live.providers[0], mean_delay=0.0)
        first_hop, _packet = router.forward(b"hi", b"\x01" * 32, self.live.providers[0])
        self.assertEqual(first_hop, self.live.first_layer[0].address)

    def test_surbs_take_the_next_keys_within_the_grace(self):
        """Within the grace before a boundary, SURBs are built on the next epoch's keys, packets not yet."""
        self.publish(3)
        self.clock.advance(38.5)  # 1.5 s before epoch 4; grace 2 s, lead 1 s
        node = self.nodes[1]
        self.assertEqual(self.key_used(node), node.sphinx_key(3).public_bytes)
        surb_topology = self.live.for_surbs()
        self.assertEqual(surb_topology.by_identity(node.identity).sphinx_key, node.sphinx_key(4).public_bytes)

    def test_keeps_the_last_good_topology(self):
        """With no document for the epoch, the last good topology stays in use."""
        self.publish(3)
        self.clock.advance(35.0)
        good = self.live.current()
        self.clock.advance(100.0)  # documents far behind
        self.live.holder = DocumentHolder(self.key.verify_key.encode(), Counters())
        self.assertIs(self.live.current(), good)
