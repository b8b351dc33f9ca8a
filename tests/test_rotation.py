"""
A mix node with epochs: each packet is unwrapped with the key its frame
names, the previous key is accepted for the grace period and then refused
and counted, and forwarded frames carry the rotation on.
"""

import os

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from nymprov.errors import PacketRefused
from nymprov.metrics import Counters
from nymprov.netdoc import Epochs
from nymprov.node.core import NodeCore
from nymprov.node.epochkeys import EpochKeyRing, RotatingKeys, replay_key_id
from nymprov.sphinx import BadMAC, Destination, KeyPair, Node, ReplayedPacket, build_packet, encode_address
from nymprov.storage.keyed import memory_per_key
from nymprov.topology import StaticTopology
from nymprov.wire.frames import ROTATION_UNKNOWN, rotation_of_epoch

from tests.test_node import RecordingSender, ScriptedProvider

MIX = encode_address("127.0.0.1", 1790)
NEXT = encode_address("127.0.0.1", 1791)
EPOCH = 10.0
GRACE = 2.0


class RotatingMixTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(3.0)  # epoch 0, past any grace
        self.counters = Counters()
        self.ring = EpochKeyRing(os.path.abspath(self.mktemp()), Epochs(EPOCH), GRACE)
        self.cache = memory_per_key(self.clock)
        self.sender = RecordingSender()
        self.next_key = KeyPair.generate()
        self.node = NodeCore(
            None, None, ScriptedProvider(None), self.sender, StaticTopology([], [NEXT]),
            self.clock, self.counters, role="mix", keys=RotatingKeys(self.ring, self.cache, self.clock),
        )
        self.refresh()

    def refresh(self):
        """What the node's epoch chore does: keys made and retired, replay scopes opened and retired."""
        made, retired = self.ring.refresh(self.clock.seconds())
        for _epoch, keypair in made:
            self.successResultOf(self.cache.open_key(replay_key_id(keypair)))
        for _epoch, keypair in retired:
            self.successResultOf(self.cache.retire_key(replay_key_id(keypair)))

    def packet_for(self, epoch):
        key = self.ring.key_of(epoch)
        return build_packet(
            b"hop", [Node(MIX, key.public_bytes), Node(NEXT, self.next_key.public_bytes)],
            [0, 0], Destination(b"\x33" * 32, b"\x22" * 16),
        )

    def receive(self, packet, rotation):
        [d] = self.node.receive_many_from_mix([packet], [rotation])
        self.clock.advance(0)
        return d

    def test_rotation_through_the_grace_period(self):
        """Current key used; previous key accepted in the grace period, refused and counted after it."""
        old = self.packet_for(0)
        self.successResultOf(self.receive(old, rotation_of_epoch(0)))
        self.assertEqual(self.sender.sent, [(NEXT, self.sender.sent[0][1])])

        early = self.packet_for(1)  # built for the next epoch ahead of time
        self.clock.advance(EPOCH - 3.0 + 0.5)  # epoch 1, inside the grace
        self.refresh()
        self.successResultOf(self.receive(early, rotation_of_epoch(1)))
        late = self.packet_for(0)
        self.successResultOf(self.receive(late, rotation_of_epoch(0)))
        # A frame that does not say: the current key fails its MAC, the previous one works.
        self.successResultOf(self.receive(self.packet_for(0), ROTATION_UNKNOWN))
        # The replay scope is the key's: the same packet again is a replay.
        self.failureResultOf(self.receive(late, rotation_of_epoch(0)), ReplayedPacket)

        self.clock.advance(GRACE)  # past the grace
        self.refresh()
        self.assertEqual(self.ring.epochs_held, [1, 2])
        failure = self.failureResultOf(self.receive(self.packet_for(1), rotation_of_epoch(0)), PacketRefused)
        self.assertEqual(failure.value.reason, "retired_key")
        self.assertEqual(self.counters.get("packets.dropped", "retired_key"), 1)
        # Unsaid rotation and the only key failing: a bad MAC, counted as such.
        self.failureResultOf(self.receive(late, ROTATION_UNKNOWN), BadMAC)
        self.assertEqual(len(self.cache.open_keys()), 2)

    def test_forwarded_frames_carry_the_rotation(self):
        """A packet unwrapped with an odd epoch's key goes on with rotation 1; a key of an even one with 2."""
        sent = []
        self.sender.send = lambda address, packet, key_rotation=0: sent.append(key_rotation) or True
        self.successResultOf(self.receive(self.packet_for(0), ROTATION_UNKNOWN))
        self.clock.advance(EPOCH)
        self.refresh()
        self.successResultOf(self.receive(self.packet_for(1), rotation_of_epoch(1)))
        self.assertEqual(sent, [rotation_of_epoch(0), rotation_of_epoch(1)])
        self.assertEqual(sent, [2, 1])
