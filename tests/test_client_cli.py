"""
``nym-client`` as a person uses it: separate processes against a testnet.
"""

import io
import os
import sys

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SynchronousTestCase, TestCase

from nymprov import __version__
from nymprov.cli import client as cli
from nymprov.cli.clientrun import SEND_ONLY_QUERY, connect_running
from nymprov.client.daemon import API_FILE
from nymprov.tools.testnet import Testnet
from tests.support import wait_for

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def nym_client(*args, stdin=None):
    """Run ``nym-client ARGS`` in a child; fires with (out, err, code)."""
    env = dict(os.environ, PYTHONPATH=_ROOT)
    return getProcessOutputAndValue(sys.executable, ["-m", "nymprov.cli.client", *args],
                                    env=env, path=_ROOT, reactor=reactor)


def run_main(argv):
    """Run ``nym-client ARGV`` in this process: ``(code, stdout, stderr)``."""
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(argv, out, err)
    return code, out.getvalue(), err.getvalue()


class HelpTests(SynchronousTestCase):
    """--version, --help and a command's --help."""

    def test_version(self):
        """--version prints nymprov's version, not Twisted's."""
        self.assertEqual(run_main(["--version"]), (0, f"nymprov {__version__}\n", ""))

    def test_help_lists_every_command(self):
        """--help lists bench with the other commands."""
        code, out, _ = run_main(["--help"])
        self.assertEqual(code, 0)
        for command in ("init", "address", "send", "receive", "bench"):
            self.assertRegex(out, rf"\n    {command} +\w")

    def test_command_help(self):
        """receive --help starts with one clean usage line."""
        code, out, _ = run_main(["receive", "--help"])
        self.assertEqual(code, 0)
        self.assertEqual(out.splitlines()[0], "Usage: nym-client receive [options]")
        self.assertNotIn("Twisted", out)


class RunOptionTests(SynchronousTestCase):
    """nym-client run's options."""

    def test_allowed_origins(self):
        """--api-allow-origin is repeatable and must name a scheme; none by default."""
        options = cli.RunOptions()
        options.parseOptions(["--api-allow-origin", "http://localhost:3000",
                              "--api-allow-origin", "https://app.example"])
        self.assertEqual(options["api-allow-origin"], ["http://localhost:3000", "https://app.example"])
        self.assertEqual(cli.RunOptions()["api-allow-origin"], [])
        code, _, err = run_main(["run", "--api-allow-origin", "localhost:3000"])
        self.assertEqual(code, 2)
        self.assertIn("not scheme://host[:port]", err)


class PrintableTests(SynchronousTestCase):
    """What receive prints for a message."""

    def test_text(self):
        """Text is printed as it is, ending in one newline."""
        self.assertEqual(cli.printable("héllo".encode()), "héllo\n")
        self.assertEqual(cli.printable(b"two\nlines\n"), "two\nlines\n")

    def test_binary(self):
        """Bytes that are not text, or text with control characters, print as one base64 line."""
        self.assertEqual(cli.printable(b"\x00\xff\x10"), "[binary, 3 bytes, base64] AP8Q\n")
        self.assertEqual(cli.printable(b"bell\x07"), "[binary, 5 bytes, base64] YmVsbAc=\n")


class RunningClient(ProcessProtocol):
    """``nym-client run ARGS`` in a child, its output kept."""

    def __init__(self, *args):
        self.output = b""
        self.ended = Deferred()
        env = dict(os.environ, PYTHONPATH=_ROOT)
        self.process = reactor.spawnProcess(
            self, sys.executable, [sys.executable, "-m", "nymprov.cli.client", "run", *args], env=env,
            path=_ROOT)

    def outReceived(self, data):
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason):
        self.ended.callback(reason.value.exitCode)

    async def stop(self):
        """SIGTERM, and the exit code once it ended (bounded by the test's timeout)."""
        if not self.ended.called:
            self.process.signalProcess("TERM")
        return await self.ended


def start_running_client(test, *args):
    client = RunningClient(*args)
    test.addCleanup(lambda: client.ended.called or client.stop())
    return client


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
        # No acknowledgement in time: said in words, exit 1.
        out, err, code = await nym_client("send", "--config", first, "--wait", "0.001", bob, "late")
        self.assertEqual(code, 1)
        self.assertEqual(err.decode().splitlines()[1:], [
            "nym-client send: no acknowledgement within 0.001 seconds (--wait);"
            " the message may still arrive, or may be lost"])
        # The first line: no running client, so it connected by itself.
        self.assertIn("no running client", err.decode().splitlines()[0])

    async def test_send_and_receive_use_a_running_client(self):
        """
        With ``nym-client run`` going for B, ``receive`` takes B's messages
        from it (no fallback notice); A has no running client, so ``send``
        says plainly that it connects by itself.  The running client stops
        on SIGTERM and removes its API file.
        """
        net = Testnet(self.mktemp(), layers=3, per_layer=1, providers=2, mean_delay_ms=5)
        self.addCleanup(net.stop)
        await net.start()
        first, second = net.client_config_paths
        out, err, code = await nym_client("init", "--config", second)
        self.assertEqual(code, 0, err)
        bob = out.decode().strip()
        bob_dir = os.path.join(os.path.dirname(second), "client-2")
        running = start_running_client(self, "--data-dir", bob_dir, "--api-listen", "tcp:0:interface=127.0.0.1")
        api_file = os.path.join(bob_dir, API_FILE)
        # The file and the line are two events: under load the test may see
        # the file before the pipe has brought the line.
        await wait_for(lambda: (os.path.exists(api_file) and b"local API on" in running.output)
                       or running.ended.called, "the running client's API file and its line")
        self.assertIn(b"local API on ws://127.0.0.1:", running.output)
        self.assertIn(b"shaped: \xce\xbb_P 100/s", running.output)
        out, err, code = await nym_client("send", "--config", first, bob, "through the daemon")
        self.assertEqual(code, 0, err)
        self.assertIn(b"no running client", err)
        self.assertIn(b"observer", err)
        out, err, code = await nym_client("receive", "--data-dir", bob_dir, "--wait", "5")
        self.assertEqual((code, out), (0, b"through the daemon\n"), err)
        self.assertNotIn(b"no running client", err)
        self.assertEqual(await running.stop(), 0, running.output)
        self.assertFalse(os.path.exists(api_file))

    async def test_running_client_keeps_up_with_its_cover(self):
        """
        A shaped client's own traffic comes back to its inbox (every
        packet's SURB-ACK, every loop), so its pulls must take more than
        that: after the running client has sent cover for a while, a message
        for it is still printed by ``receive`` within its default wait, as
        the README's tour does it.  (Pulling 64 every 0.5 s took 128 of the
        ~220 messages a second that λ_P 100/s and λ_L 10/s bring back, so a
        real message waited behind a backlog that only grew.)
        """
        net = Testnet(self.mktemp(), layers=3, per_layer=1, providers=2, mean_delay_ms=5)
        self.addCleanup(net.stop)
        await net.start()
        first, second = net.client_config_paths
        out, err, code = await nym_client("init", "--config", second)
        self.assertEqual(code, 0, err)
        bob = out.decode().strip()
        bob_dir = os.path.join(os.path.dirname(second), "client-2")
        running = start_running_client(self, "--data-dir", bob_dir, "--api-listen", "tcp:0:interface=127.0.0.1")
        api_file = os.path.join(bob_dir, API_FILE)
        await wait_for(lambda: os.path.exists(api_file) or running.ended.called, "the running client's API file")
        stats = {}

        async def read_stats():
            api = await connect_running(reactor, bob_dir, SEND_ONLY_QUERY)
            api.request({"type": "stats", "id": 1})
            stats.update((await api.next_message())["stats"])
            await api.close()

        # Ten seconds of cover at λ_P 100/s: a backlog builds up if the
        # pulls don't keep up (an observable count, not a sleep).
        while stats.get("stream.sent.cover", 0) < 1000:
            self.assertFalse(running.ended.called, running.output)
            await read_stats()
        out, err, code = await nym_client("send", "--config", first, bob, "behind the cover")
        self.assertEqual(code, 0, err)
        out, err, code = await nym_client("receive", "--data-dir", bob_dir)
        self.assertEqual((code, out), (0, b"behind the cover\n"), err)

    async def test_bad_usage_exits_2(self):
        """A bad address or missing settings exit 2 with a message, not a traceback."""
        out, err, code = await nym_client("send", "not-an-address", "x")
        self.assertEqual(code, 2)
        self.assertIn(b"nym-client send", err)
        self.assertNotIn(b"Traceback", err)
