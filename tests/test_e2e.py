"""
End to end through a whole testnet (issue 4's Done-when): real processes,
real TCP mix links, TLS client connections pinned to the topology.
"""

import hashlib
import os

from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from nymprov.client import ClientKeys, NymClient
from nymprov.tools.testnet import Testnet

MESSAGE_COUNT = 50
LARGEST = 20 * 1024
STOPPED_NODE = "mix-2-1"


class EndToEndTests(TestCase):
    """Two clients on two providers of a 3-layer testnet."""

    timeout = 180

    async def client(self, net, provider, ack_timeout):
        """A started client of ``provider`` with small delays."""
        client = NymClient(
            ClientKeys.generate(), net.topology, provider.identity, reactor=reactor,
            mean_delay=0.005, pull_interval=0.2, ack_timeout=ack_timeout, reply_surbs=2,
            max_attempts=20, loop_rate=2.0,
        )
        await client.start()
        self.addCleanup(client.stop)
        return client

    async def take(self, client, count, seconds):
        """The next ``count`` messages of ``client``'s inbox, within ``seconds``."""
        taken = []
        for _ in range(count):
            d = client.inbox.get()
            d.addTimeout(seconds, reactor)
            taken.append(await d)
        return taken

    async def test_messages_and_replies_survive_a_stopped_mix(self):
        """
        A on provider 1 sends 50 messages of 0 bytes to 20 KB to B on
        provider 2 while the only layer-2 mix is stopped (and restarted only
        after the ACK timeout, so the packets routed through it in the
        meantime need retransmission).  B receives each message exactly once
        and complete; B answers each through its SURBs and A receives every
        reply, matched to its message.
        """
        net = Testnet(self.mktemp(), layers=3, per_layer=1, providers=2, mean_delay_ms=5)
        self.addCleanup(net.stop)
        await net.start()
        ack_timeout = 3.0
        first, second = net.topology.providers
        alice = await self.client(net, first, ack_timeout)
        bob = await self.client(net, second, ack_timeout)

        sizes = [round(i * LARGEST / (MESSAGE_COUNT - 1)) for i in range(MESSAGE_COUNT)]
        sent = [os.urandom(size) for size in sizes]
        half = MESSAGE_COUNT // 2
        sends = [alice.send(str(bob.address), data) for data in sent[:half]]
        received = await self.take(bob, 5, 30)
        # The stopped mix is down for longer than the ACK timeout.
        await net.stop_node(STOPPED_NODE)
        sends += [alice.send(bob.address, data) for data in sent[half:]]
        await deferLater(reactor, ack_timeout + 1.5, lambda: None)
        await net.start_node(STOPPED_NODE)
        hints = await gatherResults(sends)
        received += await self.take(bob, MESSAGE_COUNT - 5, 60)

        self.assertEqual(sorted(m.data for m in received), sorted(sent))
        self.assertGreater(alice.counters.get("packets.sent", "retransmission"), 0)
        # Duplicates from retransmission were dropped, not delivered twice.
        await deferLater(reactor, 1.0, lambda: None)
        self.assertEqual(len(bob.inbox.pending), 0)
        self.assertTrue(all(len(m.surbs) == 2 for m in received))

        answers = {m.message_id: b"re: " + hashlib.sha256(m.data).digest() for m in received}
        await gatherResults([bob.reply(m, answers[m.message_id]) for m in received])
        replies = await self.take(alice, MESSAGE_COUNT, 60)
        self.assertTrue(all(r.is_reply for r in replies))
        by_hint = {r.in_reply_to: r.data for r in replies}
        expected = {hint: b"re: " + hashlib.sha256(data).digest() for hint, data in zip(hints, sent)}
        self.assertEqual(by_hint, expected)
        self.assertGreater(alice.counters.get("cover.received"), 0)
