"""Tests for nymprov.cli.provider: the nym-provider command."""

import importlib.machinery
import io
import os
import signal
import stat
import subprocess
import sys
import types

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.trial.unittest import SynchronousTestCase, TestCase

from nymprov import __version__
from nymprov.cli import mixnode as mixnode_cli
from nymprov.cli import provider as cli
from nymprov.keys import load_keys
from nymprov.net.tls import certificate_fingerprint, load_certificate

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# What the original nym-provider printed with no arguments.
ORIGINAL_BANNER = r"""Usage: nym-provider COMMAND [OPTIONS]


  _ __  _   _ _ __ ___
 | '_ \| | | | '_ \ _ \
 | | | | |_| | | | | | |
 |_| |_|\__, |_| |_| |_|
        |___/

(mixnet-provider)


Commands:

    run         Run a Nym mixnet provider for offline storage

Run "nym-provider help <command>" for more info on a specific command.
"""


def run_main(argv):
    """Run ``cli.main(argv)``; return ``(exit code, stdout, stderr)``."""
    stdout, stderr = io.StringIO(), io.StringIO()
    code = cli.main(argv, stdout=stdout, stderr=stderr)
    return code, stdout.getvalue(), stderr.getvalue()


class BannerAndHelpTests(SynchronousTestCase):
    """No arguments, help and --version."""

    def test_no_arguments(self):
        """
        With no arguments: the original nym-provider's text line for line,
        nymprov's own commands after run; exit 0.
        """
        code, out, err = run_main([])
        self.assertEqual((code, err), (0, ""))
        lines = out.splitlines()
        run_line = lines.index(ORIGINAL_BANNER.splitlines()[14])
        extra = [f"    {name:<11} {summary}" for name, summary in cli.COMMANDS[1:]]
        self.assertEqual(lines[run_line + 1: run_line + 1 + len(extra)], extra)
        del lines[run_line + 1: run_line + 1 + len(extra)]
        self.assertEqual(lines, ORIGINAL_BANNER.splitlines())
        for command in ("init", "bench", "testnet", "help"):
            self.assertIn(f"    {command} ", out)

    def test_mixnode_no_arguments(self):
        """nym-mixnode alone prints the same logo and layout, for its own commands."""
        out, err = io.StringIO(), io.StringIO()
        self.assertEqual(mixnode_cli.main([], out, err), 0)
        lines = out.getvalue().splitlines()
        self.assertEqual(lines[:9], ORIGINAL_BANNER.replace("nym-provider", "nym-mixnode").splitlines()[:9])
        self.assertEqual(lines[9], "(mixnode)")
        self.assertIn("    run         Run a Nym mix node", lines)

    def test_version(self):
        """--version prints the version alone."""
        self.assertEqual(run_main(["--version"]), (0, f"nymprov {__version__}\n", ""))

    def test_help_lists_commands(self):
        """help lists the commands."""
        code, out, err = run_main(["help"])
        self.assertEqual(code, 0)
        for command in ("run", "init", "bench"):
            self.assertIn(f"    {command} ", out)

    def test_help_run(self):
        """help run prints every run option, --log-level included."""
        code, out, err = run_main(["help", "run"])
        self.assertEqual(code, 0)
        for option in ("--data-dir", "--mix-listen", "--client-listen", "--no-client-tls",
                       "--first-layer", "--max-delay", "--stats-interval", "--log-level",
                       "--config"):
            self.assertIn(option, out)

    def test_help_other_commands(self):
        """help init, help bench and help help each describe their command."""
        for command in ("init", "bench", "help"):
            code, out, err = run_main(["help", command])
            self.assertEqual(code, 0)
            self.assertIn(f"nym-provider {command}", out)

    def test_help_init_lists_its_own_options(self):
        """help init lists --data-dir and --config, not the run options."""
        code, out, err = run_main(["help", "init"])
        self.assertEqual(code, 0)
        self.assertIn("--data-dir", out)
        self.assertIn("--config", out)
        for option in ("--pull-max", "--mix-listen", "--backend", "--log-level"):
            self.assertNotIn(option, out)
        self.assertNotIn("Twisted", out)

    def test_help_unknown_command(self):
        """help of an unknown command exits 2 with the command list on stderr."""
        code, out, err = run_main(["help", "frob"])
        self.assertEqual(code, 2)
        self.assertEqual(out, "")
        self.assertIn("frob", err)
        self.assertIn("Commands:", err)

    def test_unknown_command(self):
        """An unknown command exits 2 with usage on stderr and nothing on stdout."""
        code, out, err = run_main(["frobnicate"])
        self.assertEqual(code, 2)
        self.assertEqual(out, "")
        self.assertIn("unknown command: frobnicate", err)
        self.assertIn("Usage: nym-provider", err)

    def test_run_help(self):
        """run --help prints the run options on stdout and exits 0."""
        code, out, err = run_main(["run", "--help"])
        self.assertEqual(code, 0)
        self.assertIn("--mix-listen", out)


class RunUsageTests(SynchronousTestCase):
    """run refuses bad command lines before anything is created."""

    def setUp(self):
        self.root = self.mktemp()
        os.mkdir(self.root)
        self.data_dir = os.path.join(self.root, "data")

    def test_unknown_option(self):
        """An unknown option exits 2 with the usage on stderr."""
        code, out, err = run_main(["run", "-d", self.data_dir, "--frobnicate"])
        self.assertEqual(code, 2)
        self.assertIn("--frobnicate", err)
        self.assertIn("Usage: nym-provider run", err)
        self.assertEqual(os.listdir(self.root), [])

    def test_invalid_value(self):
        """An invalid value exits 2 with one line naming the option; nothing is created."""
        code, out, err = run_main(["run", "-d", self.data_dir, "--max-delay", "-1"])
        self.assertEqual(code, 2)
        self.assertEqual(err.count("\n"), 1)
        self.assertIn("--max-delay", err)
        self.assertEqual(os.listdir(self.root), [])

    def test_invalid_log_level(self):
        """An unknown --log-level exits 2 naming it."""
        code, out, err = run_main(["run", "-d", self.data_dir, "--log-level", "loud"])
        self.assertEqual(code, 2)
        self.assertIn("--log-level", err)
        self.assertEqual(os.listdir(self.root), [])

    def test_processes_need_a_shared_store(self):
        """
        --processes above 1 with the SQLite store, or not a count, exits 2
        naming the option; nothing is created.
        """
        for argv in (["--processes", "2"], ["--processes", "0"], ["--processes", "many"],
                     ["--processes", "2", "--store", "memory"]):
            code, out, err = run_main(["run", "-d", self.data_dir] + argv)
            self.assertEqual(code, 2, argv)
            self.assertIn("--processes", err)
        self.assertEqual(os.listdir(self.root), [])

    def test_processes_bad_endpoint(self):
        """
        --processes shares tcp: endpoints only; any other exits 1 with a
        message naming it.
        """
        code, out, err = run_main(["run", "-d", self.data_dir, "--processes", "2",
                                   "--store", "postgresql://nobody@localhost/none", "--no-client-tls",
                                   "--client-listen", "unix:" + os.path.join(self.root, "sock")])
        self.assertEqual(code, 1)
        self.assertIn("only tcp: and tcp6: endpoints", err)

    def test_init_invalid_value(self):
        """init with a run option or a bad config value exits 2 and creates nothing."""
        code, out, err = run_main(["init", "-d", self.data_dir, "--pull-max", "x"])
        self.assertEqual(code, 2)
        self.assertIn("--pull-max", err)
        config = os.path.join(self.root, "run.toml")
        with open(config, "w") as f:
            f.write(f'data-dir = "{self.data_dir}"\npull-max = 0\n')
        code, out, err = run_main(["init", "--config", config])
        self.assertEqual(code, 2)
        self.assertIn("--pull-max", err)
        self.assertEqual(os.listdir(self.root), ["run.toml"])

    def test_init_data_dir_from_config(self):
        """init takes the data directory from the run config file."""
        config = os.path.join(self.root, "run.toml")
        with open(config, "w") as f:
            f.write(f'data-dir = "{self.data_dir}"\nstore = "memory"\n')
        code, out, err = run_main(["init", "--config", config])
        self.assertEqual((code, err), (0, ""))
        self.assertIn(f"data directory:          {os.path.abspath(self.data_dir)}", out)
        self.assertTrue(os.path.exists(os.path.join(self.data_dir, "identity.key")))


class InitTests(SynchronousTestCase):
    """init creates the data dir, keys and certificate and prints them."""

    def setUp(self):
        self.data_dir = os.path.join(self.mktemp(), "data")

    def mode(self, name):
        return stat.S_IMODE(os.stat(os.path.join(self.data_dir, name)).st_mode)

    def test_creates_files_with_modes(self):
        """The data dir is 0700, the key files 0600."""
        code, out, err = run_main(["init", "--data-dir", self.data_dir])
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(stat.S_IMODE(os.stat(self.data_dir).st_mode), 0o700)
        for name in ("identity.key", "sphinx.key", "tls.key"):
            self.assertEqual(self.mode(name), 0o600)
        self.assertTrue(os.path.exists(os.path.join(self.data_dir, "tls.crt")))

    def test_prints_what_is_on_disk(self):
        """The printed keys and fingerprint are those of the files; a rerun prints the same."""
        code, out, err = run_main(["init", "--data-dir", self.data_dir])
        keys = load_keys(self.data_dir)
        self.assertIn(keys.identity_base58, out)
        self.assertIn(keys.sphinx.public_base58, out)
        self.assertIn(certificate_fingerprint(load_certificate(self.data_dir)).hex(), out)
        self.assertEqual(run_main(["init", "--data-dir", self.data_dir]), (0, out, ""))

    def test_refuses_open_key_file(self):
        """A group-readable key file makes init fail with exit 1 naming the file."""
        run_main(["init", "--data-dir", self.data_dir])
        path = os.path.join(self.data_dir, "sphinx.key")
        os.chmod(path, 0o640)
        code, out, err = run_main(["init", "--data-dir", self.data_dir])
        self.assertEqual(code, 1)
        self.assertIn(path, err)
        self.assertEqual(out, "")


class BrokenPipeTests(SynchronousTestCase):
    """A reader that goes away (``init | head -3``) ends the command quietly."""

    def run_into_closed_pipe(self, unbuffered):
        data_dir = os.path.abspath(self.mktemp())
        read_end, write_end = os.pipe()
        os.close(read_end)
        env = dict(os.environ, PYTHONPATH=REPO_ROOT)
        env.pop("PYTHONUNBUFFERED", None)
        if unbuffered:
            env["PYTHONUNBUFFERED"] = "1"
        try:
            child = subprocess.run([sys.executable, "-m", "nymprov", "init", "-d", data_dir],
                                   stdout=write_end, stderr=subprocess.PIPE, env=env, cwd=REPO_ROOT,
                                   timeout=60)
        finally:
            os.close(write_end)
        return child.returncode, child.stderr.decode("utf-8", "replace")

    def test_buffered(self):
        """Buffered output (the default for a pipe): exit 1, nothing on stderr."""
        self.assertEqual(self.run_into_closed_pipe(False), (1, ""))

    def test_unbuffered(self):
        """Unbuffered output (PYTHONUNBUFFERED): exit 1, nothing on stderr."""
        self.assertEqual(self.run_into_closed_pipe(True), (1, ""))


class BenchTests(SynchronousTestCase):
    """bench hands over to the benchmark module."""

    def test_missing_bench(self):
        """Without a benchmark module: a clear error and exit 1."""
        self.patch(cli, "BENCH_MODULE", "nymprov.no_such_bench_module")
        code, out, err = run_main(["bench"])
        self.assertEqual(code, 1)
        self.assertIn("not installed", err)

    def test_hands_over_arguments(self):
        """The arguments after bench go to the module's main; its result is the exit code."""
        calls = []
        fake = types.ModuleType("fake_nymprov_bench")
        fake.__spec__ = importlib.machinery.ModuleSpec("fake_nymprov_bench", None)
        fake.main = lambda args: calls.append(args) or 3
        sys.modules["fake_nymprov_bench"] = fake
        self.addCleanup(sys.modules.pop, "fake_nymprov_bench")
        self.patch(cli, "BENCH_MODULE", "fake_nymprov_bench")
        self.assertEqual(run_main(["bench", "--rounds", "1"])[0], 3)
        self.assertEqual(calls, [["--rounds", "1"]])


class _Watcher(ProcessProtocol):
    """Collects a child's stderr; fires when it has listened twice, and on exit."""

    def __init__(self):
        self.stderr = b""
        self.listening = Deferred()
        self.ended = Deferred()

    def errReceived(self, data):
        self.stderr += data
        if b" started: " in self.stderr and not self.listening.called:
            self.listening.callback(None)

    def processEnded(self, reason):
        if not self.listening.called:
            self.listening.errback(reason)
        self.ended.callback(reason.value.exitCode)


class RunProcessTests(TestCase):
    """python -m nymprov run, in a child process."""

    timeout = 60

    def run_until_signal(self, signal_number):
        """
        Start ``python -m nymprov run`` on loopback, wait until it listens,
        send ``signal_number``; return a Deferred firing with the exit code.
        """
        data_dir = os.path.abspath(self.mktemp())
        watcher = _Watcher()
        env = dict(os.environ, PYTHONPATH=REPO_ROOT)
        argv = [sys.executable, "-m", "nymprov", "run", "--data-dir", data_dir,
                "--store", "memory",
                "--mix-listen", "tcp:0:interface=127.0.0.1",
                "--client-listen", "tcp:0:interface=127.0.0.1",
                "--http-listen", "tcp:0:interface=127.0.0.1", "--admin-socket", "none"]
        process = reactor.spawnProcess(watcher, sys.executable, argv, env=env, path=REPO_ROOT)

        def listening(_):
            self.assertTrue(os.path.exists(os.path.join(data_dir, "identity.key")))
            process.signalProcess(signal_number)
            return watcher.ended

        def failed(reason):
            self.fail(watcher.stderr.decode("utf-8", "replace"))

        def ended(code):
            self.assertIn(b"Main loop terminated", watcher.stderr)
            return code, watcher.stderr.decode("utf-8", "replace")

        return watcher.listening.addCallbacks(listening, failed).addCallback(ended)

    def test_run_and_stop_on_sigterm(self):
        """run listens on its endpoints, and SIGTERM stops it cleanly with exit 0."""
        d = self.run_until_signal(signal.SIGTERM)
        return d.addCallback(lambda result: self.assertEqual(result[0], 0, result[1]))

    def test_run_and_stop_on_sigint(self):
        """SIGINT (Ctrl-C) stops run cleanly with exit 0 too."""
        d = self.run_until_signal(signal.SIGINT)
        return d.addCallback(lambda result: self.assertEqual(result[0], 0, result[1]))
