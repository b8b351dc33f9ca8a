"""
Node loops on a testnet of real processes: with every node healthy the
provider gets back at least 95% of its loops and warns of nothing; with a
mix node that drops every packet (``--fault-drop 1``) the provider warns
within a stated number of loops.
"""

import re

from twisted.trial.unittest import TestCase

from nymprov.tools.testnet import Testnet
from tests.support import wait_for

RATE = 5.0  # λ_M, loops per second
WINDOW = 3.0  # seconds
ROTATING_EPOCH = 4.0  # seconds: keys rotate every 4 s (grace 1 s)
#: The loops a provider sends before a fault from its start shows: one
#: window of warm-up, one whose loops are judged (2 x RATE x WINDOW = 30),
#: with room for Poisson noise.
WARNED_WITHIN = 45

_JUDGED = re.compile(r"node loops: (\d+) of (\d+) returned")
_SENT = re.compile(r"(\d+) sent so far")


def loop_lines(node, since=0):
    """The node-loop lines of ``node``'s log after byte ``since``."""
    with open(node.log_path, "rb") as f:
        f.seek(since)
        text = f.read().decode("utf-8", "replace")
    return [line for line in text.splitlines() if "node loops:" in line]


class NodeLoopTestnetTests(TestCase):

    timeout = 150

    async def start_testnet(self, extra=None, epoch_length=0.0):
        net = Testnet(self.mktemp(), layers=3, per_layer=1, providers=2, mean_delay_ms=5,
                      node_loop_rate=RATE, node_loop_window=WINDOW, extra_arguments=extra,
                      epoch_length=epoch_length)
        self.addCleanup(net.stop)
        await net.start()
        return net

    async def test_healthy_nodes_get_their_loops_back(self):
        """Four judged windows after start: no warning, at least 95% returned."""
        net = await self.start_testnet()
        provider = net.nodes["provider-1"]
        await wait_for(lambda: len(loop_lines(provider)) >= 4, "four judged windows", 60)
        lines = loop_lines(provider)
        self.assertEqual([line for line in lines if "below" in line], [])
        judged = [tuple(map(int, _JUDGED.search(line).groups())) for line in lines]
        returned, due = sum(r for r, _ in judged), sum(d for _, d in judged)
        print(f"\nhealthy testnet: provider-1 got {returned} of {due} loops back at λ_M {RATE:g}/s")
        self.assertGreaterEqual(returned / due, 0.95)
        # The mixes judge their own loops too.
        self.assertTrue(loop_lines(net.nodes["mix-2-1"]))

    async def test_loops_go_on_across_key_rotations(self):
        """
        With a directory and epochs of ROTATING_EPOCH seconds, every node
        rotates its Sphinx keys several times while its loops run: the
        provider and the mixes judge windows across the boundaries, at
        least 95% of the provider's loops come back, no warning.
        """
        net = await self.start_testnet(epoch_length=ROTATING_EPOCH)
        provider = net.nodes["provider-1"]
        # Loops start after one window; six judged windows span 18 s, so
        # at least four boundaries of 4 s epochs.
        await wait_for(lambda: len(loop_lines(provider)) >= 6, "six judged windows", 90)
        lines = loop_lines(provider)
        self.assertEqual([line for line in lines if "below" in line], [])
        judged = [tuple(map(int, _JUDGED.search(line).groups())) for line in lines]
        returned, due = sum(r for r, _ in judged), sum(d for _, d in judged)
        print(f"\nrotating testnet ({ROTATING_EPOCH:g} s epochs): provider-1 got {returned} of {due} loops back"
              f" at λ_M {RATE:g}/s")
        self.assertGreaterEqual(returned / due, 0.95)
        for name in ("mix-1-1", "mix-2-1", "mix-3-1"):
            await wait_for(lambda: loop_lines(net.nodes[name]), f"{name}'s judged loops", 30)

    async def test_a_dropping_mix_shows_in_the_providers_loops(self):
        """
        With the only layer-2 mix dropping everything, provider-1 warns,
        naming the window and rate, within WARNED_WITHIN loops.
        """
        net = await self.start_testnet({"mix-2-1": ["--fault-drop", "1"]})
        provider = net.nodes["provider-1"]
        await wait_for(lambda: any("below" in line for line in loop_lines(provider)), "the warning", 60)
        warning = next(line for line in loop_lines(provider) if "below" in line)
        self.assertIn("0 of", warning)
        self.assertIn(f"λ_M {RATE:g}/s", warning)
        self.assertIn(f"{WINDOW:g} s window", warning)
        sent = int(_SENT.search(warning).group(1))
        print(f"\ndropping mix: provider-1 warned after {sent} loops sent (λ_M {RATE:g}/s, {WINDOW:g} s windows)")
        self.assertLessEqual(sent, WARNED_WITHIN)
        with open(net.nodes["mix-2-1"].log_path) as f:
            self.assertIn("FAULT INJECTION", f.read())
