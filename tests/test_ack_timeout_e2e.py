"""
The client's ACK timeout follows the round trips it measures, through a
whole testnet: real node processes, real TLS sessions.

Found by ``nym-client bench`` on a busy machine: when ACKs came back later
than the fixed timeout, the client sent again packets that were not lost
(3,803 of 10,000 in one run), which loaded the network more, which delayed
more ACKs.  And it dropped an ACK that came after its packet's timeout, so
a network always slower than the timeout completed no send at all.  Here the network is slower than the client's configured
timeout on purpose (the clients choose 100 ms per hop; the timeout is
0.4 s), as a loaded network is.
"""

from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.trial.unittest import TestCase

from nymprov.client import ClientKeys, NymClient
from nymprov.tools.testnet import Testnet

WAVE = 10
CONFIGURED_TIMEOUT = 0.4
MEAN_DELAY = 0.1


class AckTimeoutTests(TestCase):
    timeout = 180

    async def client(self, net, provider):
        client = NymClient(
            ClientKeys.generate(), net.topology, provider.identity, reactor=reactor,
            mean_delay=MEAN_DELAY, pull_interval=0.2, ack_timeout=CONFIGURED_TIMEOUT,
            max_attempts=20, shaped=False,
        )
        await client.start()
        self.addCleanup(client.stop)
        return client

    async def test_slow_acks_are_waited_for(self):
        """
        After a first wave of messages, whose ACKs take longer than the
        configured timeout, the client waits long enough: the next two
        waves are hardly sent twice, and every message arrives once.
        """
        net = Testnet(self.mktemp(), layers=3, per_layer=1, providers=2, mean_delay_ms=MEAN_DELAY * 1000)
        self.addCleanup(net.stop)
        await net.start()
        first, second = net.topology.providers
        alice = await self.client(net, first)
        bob = await self.client(net, second)

        async def wave(number):
            sends = [alice.send(bob.address, f"{number}-{i}".encode()) for i in range(WAVE)]
            await gatherResults(sends)

        await wave(0)
        learning = alice.counters.get("packets.sent", "retransmission")
        await wave(1)
        await wave(2)
        again = alice.counters.get("packets.sent", "retransmission") - learning
        print(f"\nsent again: {learning} in the first wave, {again} in the next two;"
              f" ACK timeout now {alice.ack_timeout:.2f} s (configured {CONFIGURED_TIMEOUT} s),"
              f" {alice.counters.get('acks.late')} late ACKs taken")
        # A fixed 0.4 s timeout sends every packet again and again, and
        # drops the late ACKs: no send ever completed.  A measured one
        # sends again only the odd packet in the delays' tail.
        self.assertLess(again, WAVE // 2, f"{again} of {2 * WAVE} packets sent again")
        # The estimator learned the round trips (the holds alone would also
        # spare some sendings).
        self.assertGreater(alice.ack_timeout, 2 * CONFIGURED_TIMEOUT)

        received = []
        while len(received) < 3 * WAVE:
            d = bob.inbox.get()
            d.addTimeout(30, reactor)
            received.append((await d).data)
        self.assertEqual(sorted(received), sorted(f"{n}-{i}".encode() for n in range(3) for i in range(WAVE)))
