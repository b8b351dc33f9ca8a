"""
The arithmetic of ``nym-client bench``: the floor and each process's share
of it.  The benchmark itself runs end to end in ``test_e2e_shaped``.
"""

import re
import sys

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from nymprov.tools import bench_network, bench_peer

from .test_client_cli import nym_client

WORK = {"build_packet": 240.0, "build_ack": 215.0, "forward_packet": 88.0, "forward_ack": 80.0,
        "final_packet": 54.0, "final_ack": 47.0, "x25519": 31.0}
LAYERS = 3


def path_processes(senders):
    names = [f"mix-{layer}-1" for layer in range(1, LAYERS + 1)] + ["provider-1", "provider-2",
                                                                  "client B (receiver)"]
    return names + [bench_network._sender_name(number, senders) for number in range(1, senders + 1)]


class FloorTests(TestCase):
    def test_shares_add_up_to_the_floor(self):
        """
        Each process's Sphinx share, over the whole path, is the floor's
        work per message, with one sender or several; the bench process
        itself has none.
        """
        for senders in (1, 2, 3):
            total = sum(bench_network.sphinx_share(name, WORK, senders) for name in path_processes(senders))
            self.assertAlmostEqual(total, bench_network.floor_per_message(WORK, LAYERS))
        self.assertIsNone(bench_network.sphinx_share("bench (this process)", WORK))

    def test_floor_counts_building_and_every_hop(self):
        """Both packets are built once, unwrapped at every layer and at their final hop."""
        per_message = 240 + 215 + 3 * (88 + 80) + 54 + 47
        self.assertEqual(bench_network.floor_per_message(WORK, LAYERS), per_message)
        lines, floor = bench_network.describe_floor(WORK, LAYERS, cores=2)
        self.assertAlmostEqual(floor, 2e6 / per_message)
        self.assertIn(f"{per_message:.0f} us of Sphinx work", lines[-1])

    def test_what_remains_beyond_the_sphinx_work(self):
        """The "beyond" line subtracts each process's share from its CPU."""
        cpu = {name: 100.0 + (bench_network.sphinx_share(name, WORK, 2) or 0.0) for name in path_processes(2)}
        cpu["bench (this process)"] = 7.0
        lines = bench_network.describe_cpu(cpu, WORK, bench_network.floor_per_message(WORK, LAYERS), senders=2)
        for name in path_processes(2):
            self.assertIn(f"{name} 100 us", lines[1])
        self.assertIn("the rest 7 us", lines[1])

    def test_measured_parts(self):
        """The measurement really builds and unwraps both kinds of packet through every hop."""
        work = bench_network.measure_message_work(LAYERS, rounds=1, per_round=3)
        self.assertEqual(set(work), set(WORK))
        for part, microseconds in work.items():
            self.assertGreater(microseconds, 0, part)


class PeerOptionsTests(TestCase):
    def test_a_sender_needs_a_recipient(self):
        """A client process without what its role needs is a usage error."""
        for args in (["send"], ["--topology", "t.json", "--provider", "x", "send"],
                     ["--topology", "t.json", "--provider", "x", "listen"]):
            self.assertEqual(bench_peer.main(args), 2, args)

    def test_bench_refuses_no_sender(self):
        """Counts below one are usage errors, before any testnet starts."""
        for args in (["--senders", "0"], ["--window", "0"], ["--pull-batch", "0"], ["--unwrap-workers", "-1"]):
            self.assertEqual(bench_network.main(args), 2, args)


class PeerProcessTests(TestCase):
    async def test_a_client_process_that_ends_early_is_said(self):
        """The benchmark stops waiting at once and names the log that holds why."""
        log = self.mktemp()
        peer = bench_network._Peer(log)
        reactor.spawnProcess(peer, sys.executable,
                             [sys.executable, "-c", "import sys; sys.stderr.write('no topology')"])
        with self.assertRaises(RuntimeError) as raised:
            await peer.expect(reactor, "ready", timeout=30)
        self.assertIn(log, str(raised.exception))
        await peer.ended
        with open(log, "rb") as f:
            self.assertEqual(f.read(), b"no topology")


class OverloadTests(TestCase):
    """``nym-client bench`` offering more than the network carries."""

    timeout = 300

    async def test_twice_the_window_does_not_collapse(self):
        """
        With 1,024 messages in flight (twice the default) the ACKs queue at
        the senders' provider, behind their pulls.  The senders sent again
        17% to 95% of their packets (four runs of 10,000), which loaded the
        network more and delayed more ACKs.  Now queued ACKs are waited
        for: hardly a packet is sent twice, and every message arrives once.
        """
        out, err, code = await nym_client("bench", "--count", "10000", "--window", "1024", "--delays", "0")
        self.assertEqual(code, 0, err)
        print("\n" + "\n".join(line for line in out.decode().splitlines() if "ms/hop" in line))
        again = int(re.search(rb"(\d+) packets sent again", out).group(1))
        self.assertIn(b"received 10000 of 10000, 0 duplicates, 10000 acknowledged", out)
        self.assertLess(again, 100, f"{again} packets sent again")
