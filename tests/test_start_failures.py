"""
A provider that cannot start says why in one line, exits non-zero and
leaves nothing it created behind; values a part would refuse at start are
usage errors when parsed.  Run as an operator runs it: ``nym-provider run``
and ``twistd -n nym-provider`` in their own processes.
"""

import os
import socket
import sys

from twisted.internet import reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from nymprov.keys import IDENTITY_KEY_FILE

LOOPBACK = "tcp:0:interface=127.0.0.1"
_TWISTD = "from twisted.scripts.twistd import run; run()"


def listening_socket():
    """:returns: a socket listening on a loopback port, and that port."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    return s, s.getsockname()[1]


def tree(path):
    """:returns: every path under ``path`` (relative), or None if it is missing."""
    if not os.path.exists(path):
        return None
    found = set()
    for directory, names, files in os.walk(path):
        for name in names + files:
            found.add(os.path.relpath(os.path.join(directory, name), path))
    return found


class StartFailureTests(TestCase):
    """Each failure to start: one line naming the cause, exit 1, nothing new on disk."""

    timeout = 120

    def command(self, how, data_dir, *options):
        # Side by side with other tests: no fixed HTTP port, no admin socket.
        options = ("--http-listen", "tcp:0:interface=127.0.0.1", "--admin-socket", "none", *options)
        if how == "run":
            return [sys.executable, "-m", "nymprov", "run", "--data-dir", data_dir, *options]
        self.pidfile = os.path.abspath(self.mktemp()) + ".pid"
        return [sys.executable, "-c", _TWISTD, "-n", "--pidfile", self.pidfile, "nym-provider",
                "--data-dir", data_dir, *options]

    async def start(self, how, data_dir, *options):
        """:returns: ``(exit code, stderr lines)`` of a start that must fail."""
        argv = self.command(how, data_dir, *options)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
        out, err, code = await getProcessOutputAndValue(argv[0], argv[1:], env=env, reactor=reactor)
        text = err.decode("utf-8", "replace")
        self.assertNotIn("Traceback", text + out.decode("utf-8", "replace"))
        return code, text.splitlines()

    def assertOneLine(self, lines, *parts):
        self.assertEqual(len(lines), 1, lines)
        for part in parts:
            self.assertIn(part, lines[0])

    async def port_in_use(self, how):
        held, port = listening_socket()
        self.addCleanup(held.close)
        in_use = f"tcp:{port}:interface=127.0.0.1"
        # The first port to bind, and a later one (the first is let go).
        for listen in (["--mix-listen", in_use, "--client-listen", LOOPBACK],
                       ["--mix-listen", LOOPBACK, "--client-listen", in_use]):
            data_dir = os.path.abspath(self.mktemp())
            code, lines = await self.start(how, data_dir, *listen, "--no-client-tls")
            self.assertEqual(code, 1)
            self.assertOneLine(lines, f"cannot listen on {in_use}", "Address already in use")
            self.assertIsNone(tree(data_dir))
        if how == "twistd":
            self.assertFalse(os.path.exists(self.pidfile))

    def test_port_in_use_run(self):
        """nym-provider run: a port in use creates no data directory, keys or database."""
        return self.port_in_use("run")

    def test_port_in_use_twistd(self):
        """twistd -n nym-provider: the same, and no pid file is left."""
        return self.port_in_use("twistd")

    async def test_bad_key(self):
        """A malformed key file stops the start naming it; no other key is made."""
        data_dir = os.path.abspath(self.mktemp())
        os.makedirs(data_dir)
        path = os.path.join(data_dir, IDENTITY_KEY_FILE)
        with open(path, "wb") as f:
            f.write(b"nymprov ed25519 identity v1\nnot hex\n")
        os.chmod(path, 0o600)
        code, lines = await self.start("run", data_dir, "--mix-listen", LOOPBACK, "--client-listen", LOOPBACK)
        self.assertEqual(code, 1)
        self.assertOneLine(lines, path)
        self.assertEqual(tree(data_dir), {IDENTITY_KEY_FILE})

    async def test_store_cannot_open(self):
        """
        A database that cannot be opened (its path is a directory) fails the
        start once the reactor runs: one line naming the cause, exit 1, and
        the data directory and keys it made are removed.
        """
        data_dir = os.path.abspath(self.mktemp())
        db_path = os.path.abspath(self.mktemp())
        os.makedirs(db_path)
        for how in ("run", "twistd"):
            code, lines = await self.start(how, data_dir, "--db-path", db_path,
                                           "--mix-listen", LOOPBACK, "--client-listen", LOOPBACK)
            self.assertEqual(code, 1, how)
            # run logs to standard error, where the reason is one critical
            # line among the log's; twistd logs to standard output and
            # prints the reason alone on standard error.
            failures = [line for line in lines if "cannot open the store" in line]
            self.assertEqual(len(failures), 1, lines)
            if how == "twistd":
                self.assertEqual(lines, failures)
            self.assertIsNone(tree(data_dir))
            self.assertEqual(tree(db_path), set())


class UsageErrorTests(TestCase):
    """Values no part accepts are usage errors (exit 2) before anything is made."""

    timeout = 120

    async def test_refused_at_parse(self):
        """--register-rate 0, --send-rate 0.25, --pull-max 70000, --slot-size 1000000."""
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
        for option, value in (("--register-rate", "0"), ("--send-rate", "0.25"),
                              ("--pull-max", "70000"), ("--slot-size", "1000000")):
            data_dir = os.path.abspath(self.mktemp())
            argv = ["-m", "nymprov", "run", "--data-dir", data_dir, "--mix-listen", LOOPBACK,
                    "--client-listen", LOOPBACK, option, value]
            out, err, code = await getProcessOutputAndValue(sys.executable, argv, env=env, reactor=reactor)
            lines = err.decode("utf-8", "replace").splitlines()
            self.assertEqual(code, 2, (option, lines))
            self.assertEqual(len(lines), 1, lines)
            self.assertTrue(lines[0].startswith(f"nym-provider: {option}: "), lines)
            self.assertIsNone(tree(data_dir))
