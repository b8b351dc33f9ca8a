"""
``nym-client`` as a person uses it: separate processes against a testnet.
"""

import os
import sys

from twisted.internet import reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from nymprov.tools.testnet import Testnet

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def nym_client(*args, stdin=None):
    """Run ``nym-client ARGS`` in a child; fires with (out, err, code)."""
    env = dict(os.environ, PYTHONPATH=_ROOT)
    return getProcessOutputAndValue(sys.executable, ["-m", "nymprov.cli.client", *args],
                                    env=env, path=_ROOT, reactor=reactor)


class CommandTests(TestCase):
    """init, address, send and receive across two providers."""

    timeout = 120

    async def test_send_and_receive_between_terminals(self):
        """A message sent by one client's command is printed by another's receive."""
        net = Testnet(self.mktemp(), layers=3, per_layer=1, providers=2, mean_delay_ms=5)
        self.addCleanup(net.stop)
        await net.start()
        first, second = net.client_config_paths
        out, err, code = await nym_client("init", "--config", second)
        self.assertEqual(code, 0, err)
        bob = out.decode().strip()
        bob_dir = os.path.join(os.path.dirname(second), "client-2")
        out, err, code = await nym_client("address", "--data-dir", bob_dir)
        self.assertEqual((code, out.decode().strip()), (0, bob), err)
        out, err, code = await nym_client("send", "--config", first, bob, "hello from a terminal")
        self.assertEqual(code, 0, err)
        self.assertIn(b"acknowledged", out)
        out, err, code = await nym_client("receive", "--data-dir", bob_dir, "--wait", "1")
        self.assertEqual((code, out), (0, b"hello from a terminal\n"), err)
        self.assertEqual(os.stat(os.path.join(bob_dir, "token")).st_mode & 0o777, 0o600)

    async def test_bad_usage_exits_2(self):
        """A bad address or missing settings exit 2 with a message, not a traceback."""
        out, err, code = await nym_client("send", "not-an-address", "x")
        self.assertEqual(code, 2)
        self.assertIn(b"nym-client send", err)
        self.assertNotIn(b"Traceback", err)
