"""
Tests that the examples in doc/sphinx.md run, and of the Sphinx benchmark
entry point in nymprov.sphinx.bench.
"""

import io
import os
import re
from contextlib import redirect_stdout

from twisted.trial.unittest import SynchronousTestCase

from nymprov.sphinx import PacketSize
from nymprov.sphinx.bench import main, run_benchmark

DOC = os.path.join(os.path.dirname(__file__), os.pardir, "doc", "sphinx.md")


class DocExampleTests(SynchronousTestCase):
    """The documentation's code."""

    def test_example_runs(self):
        """Every python block of doc/sphinx.md runs and its asserts hold."""
        with open(DOC) as f:
            blocks = re.findall(r"```python\n(.*?)```", f.read(), re.S)
        self.assertTrue(blocks)
        for block in blocks:
            exec(compile(block, DOC, "exec"), {})


class BenchmarkTests(SynchronousTestCase):
    """The benchmark's figures and report."""

    def test_figures(self):
        """run_benchmark returns positive, consistent figures."""
        figures = run_benchmark(count=5, rounds=1, size=PacketSize.ACK)
        self.assertEqual(figures["packet_size"], 386)
        for name in ("x25519_us", "forward_hop_us", "final_hop_us", "create_3hop_us"):
            self.assertGreater(figures[name], 0)
        self.assertAlmostEqual(figures["forward_hop_per_s"], 1e6 / figures["forward_hop_us"])
        self.assertAlmostEqual(
            figures["final_hop_x25519_ratio"], figures["final_hop_us"] / figures["x25519_us"]
        )
        self.assertIn(figures["chacha20"], ("libsodium", "cryptography"))
        self.assertIn(figures["aes_ctr"], ("libcrypto", "cryptography"))

    def test_main_prints(self):
        """main() prints every figure and returns 0."""
        out = io.StringIO()
        with redirect_stdout(out):
            self.assertEqual(main(["--count", "3", "--rounds", "1"]), 0)
        text = out.getvalue()
        for label in ("X25519", "forward-hop", "final-hop", "3-hop", "packets/s", "ChaCha20 from"):
            self.assertIn(label, text)
