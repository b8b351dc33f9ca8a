"""
End to end on a testnet with shaping on: 100 messages from A to B arrive
exactly once, and the latency they paid for it is printed next to λ_P.
``nym-client bench`` says whether its clients shaped their sending.
"""

import struct

from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.trial.unittest import TestCase

from nymprov.client import ClientKeys, NymClient
from nymprov.tools.bench_network import percentile
from nymprov.tools.testnet import TESTNET_LOOP_RATE, TESTNET_SEND_RATE, Testnet
from tests.support import wait_for
from tests.test_client_cli import nym_client

MESSAGES = 100
_STAMP = struct.Struct(">dI")  # send time, index


class ShapedEndToEndTests(TestCase):
    timeout = 180

    async def test_hundred_messages_arrive_exactly_once(self):
        """100 messages A -> B through a 3-layer testnet, shaped at the testnet's rates."""
        net = Testnet(self.mktemp(), layers=3, per_layer=1, providers=2, mean_delay_ms=5)
        self.addCleanup(net.stop)
        await net.start()
        clients = []
        for provider in net.topology.providers:
            client = NymClient(ClientKeys.generate(), net.topology, provider.identity, reactor=reactor,
                               mean_delay=0.005, pull_interval=0.2, ack_timeout=5.0, max_attempts=20,
                               send_rate=TESTNET_SEND_RATE, loop_rate=TESTNET_LOOP_RATE)
            await client.start()
            self.addCleanup(client.stop)
            clients.append(client)
        alice, bob = clients
        self.assertTrue(alice.stream.shaped)
        sends = [alice.send(bob.address, _STAMP.pack(reactor.seconds(), i) + bytes(500))
                 for i in range(MESSAGES)]
        latencies, indices = [], []
        for _ in range(MESSAGES):
            d = bob.inbox.get()
            d.addTimeout(60, reactor)
            message = await d
            sent_at, index = _STAMP.unpack_from(message.data)
            latencies.append(reactor.seconds() - sent_at)
            indices.append(index)
        await gatherResults(sends)
        # Duplicates from retransmission would arrive by B's next pulls:
        # three more of them must bring nothing.
        pulls = bob.counters.get("pulls")
        await wait_for(lambda: bob.counters.get("pulls") >= pulls + 3, "three more pulls by B")
        self.assertEqual(len(bob.inbox.pending), 0)
        self.assertEqual(sorted(indices), list(range(MESSAGES)))
        print(f"\nshaped, λ_P = {TESTNET_SEND_RATE:g}/s, λ_L = {TESTNET_LOOP_RATE:g}/s, 5 ms/hop:"
              f" latency median {1000 * percentile(latencies, 0.5):.0f} ms,"
              f" p95 {1000 * percentile(latencies, 0.95):.0f} ms over {MESSAGES} messages;"
              f" queue longest {alice.stats()['stream.queue_longest']} packets")

    async def test_bench_says_whether_shaping_was_on(self):
        """The benchmark prints the shaping it ran with, either way."""
        out, err, code = await nym_client("bench", "--count", "5", "--delays", "0", "--send-rate", "80")
        self.assertEqual(code, 0, err)
        self.assertIn("shaping ON: λ_P = 80 packets/s".encode(), out)
        out, err, code = await nym_client("bench", "--count", "5", "--delays", "0", "--unshaped")
        self.assertEqual(code, 0, err)
        self.assertIn(b"shaping OFF", out)
        # The capacity figures: the floor, the share of it, every process's
        # CPU, each client in a process of its own, every message ACKed.
        self.assertIn(b"floor: a message is its packet and its SURB-ACK", out)
        self.assertIn(b"received 5 of 5, 0 duplicates, 5 acknowledged", out)
        cpu = out.split(b"CPU per message:")[1]
        for process in (b"mix-1-1", b"mix-2-1", b"mix-3-1", b"provider-1", b"provider-2",
                        b"client A1 (sender)", b"client A2 (sender)", b"client B (receiver)"):
            self.assertIn(process, cpu)
        self.assertIn(b"beyond the Sphinx work:", out)
