"""
SIGHUP to a running ``nym-provider run``, in a child process: it keeps
running, an open client connection survives, a changed invite code and
topology take effect, and the log file is reopened.
"""

import os
import signal
import sys
import tempfile
import shutil

from nacl.signing import SigningKey
from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.protocol import ProcessProtocol
from twisted.trial.unittest import TestCase

from nymprov.client import session as provider_client
from nymprov.net.tls import certificate_fingerprint, load_certificate
from nymprov.sphinx import encode_address
from nymprov.topology import MixNode, Topology, dump_topology
from nymprov.wire import clientapi as api

from tests.support import wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Two first-layer mix nodes that need not exist: a client packet for one
#: is accepted (queued for it) or refused by the topology alone.
MIX_A = ("127.0.0.1", 1)
MIX_B = ("127.0.0.1", 2)


def write_topology(path, host_port):
    host, port = host_port
    mix = MixNode(os.urandom(32), os.urandom(32), host, port, 1)
    dump_topology(Topology(mixnodes=[mix]), path)


def write_config(path, data_dir, topology, invite, logfile):
    with open(path, "w") as f:
        f.write(
            f'data-dir = "{data_dir}"\n'
            'mix-listen = ["tcp:0:interface=127.0.0.1"]\n'
            'client-listen = ["tcp:0:interface=127.0.0.1"]\n'
            'http-listen = ["tcp:0:interface=127.0.0.1"]\n'
            'admin-socket = "none"\n'
            'store = "memory"\n'
            'unwrap-workers = 0\n'
            'registration = "invite"\n'
            f'invite-code = ["{invite}"]\n'
            f'topology = "{topology}"\n'
        )


class _Child(ProcessProtocol):
    def __init__(self):
        self.output = b""
        self.ended = Deferred()

    def outReceived(self, data):
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason):
        self.ended.callback(reason.value.exitCode)


class HangupTests(TestCase):
    """The whole SIGHUP path, as an operator's logrotate or systemctl reload takes it."""

    timeout = 90

    def setUp(self):
        self.root = tempfile.mkdtemp(prefix="nymprov-hup-")
        if not os.environ.get("NYMPROV_KEEP"):
            self.addCleanup(shutil.rmtree, self.root, True)
        self.data_dir = os.path.join(self.root, "data")
        self.config = os.path.join(self.root, "provider.toml")
        self.topology = os.path.join(self.root, "topology.json")
        self.log = os.path.join(self.root, "provider.log")

    def read_log(self, path=None):
        try:
            with open(path or self.log) as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def client_port(self):
        for line in self.read_log().splitlines():
            if "(client API" in line and "Listening on " in line:
                return int(line.split("Listening on ", 1)[1].split(" ", 1)[0].rsplit(":", 1)[1])
        return None

    async def connect(self, port):
        fingerprint = certificate_fingerprint(load_certificate(self.data_dir))
        session = await provider_client.connect(reactor, "127.0.0.1", port, fingerprint)
        self.addCleanup(session.close)
        return session

    def test_sighup_reloads_without_dropping_connections(self):
        return ensureDeferred(self._sighup())

    async def _sighup(self):
        write_topology(self.topology, MIX_A)
        write_config(self.config, self.data_dir, self.topology, "first-code", self.log)
        child = _Child()
        env = dict(os.environ, PYTHONPATH=ROOT)
        process = reactor.spawnProcess(
            child, sys.executable,
            [sys.executable, "-m", "nymprov", "run", "--config", self.config, "--logfile", self.log],
            env=env, path=ROOT)
        self.addCleanup(lambda: child.ended.called or process.signalProcess("KILL"))
        await wait_for(lambda: " started: " in self.read_log() or child.ended.called, "the provider to start")
        self.assertFalse(child.ended.called, child.output + self.read_log().encode())
        port = self.client_port()
        # One start summary line says what runs; no Twisted port or factory noise.
        [summary] = [line for line in self.read_log().splitlines() if " started: " in line]
        for part in ("nym-provider", "identity ", "backend inbox", "registration invite",
                     f"client API 127.0.0.1:{port}", f"topology {self.topology}"):
            self.assertIn(part, summary)
        self.assertNotIn("starting on", self.read_log())

        # A client registered with the first code, its connection kept open.
        alice = SigningKey.generate()
        kept = await self.connect(port)
        token = await kept.register(alice, invite=b"first-code")
        await kept.authenticate(bytes(alice.verify_key), token)
        await kept.send(encode_address(*MIX_A), b"\0" * 2413)

        # The operator edits the config, logrotate moves the log away.
        write_topology(self.topology, MIX_B)
        write_config(self.config, self.data_dir, self.topology, "second-code", self.log)
        os.rename(self.log, self.log + ".1")
        process.signalProcess(signal.SIGHUP)
        await wait_for(lambda: "SIGHUP: reloaded" in self.read_log() or child.ended.called,
                       "the reload to be logged in a new file")
        self.assertFalse(child.ended.called, child.output)
        self.assertIn("SIGHUP: reloaded", self.read_log())
        self.assertNotIn("SIGHUP", self.read_log(self.log + ".1"))

        # The open connection is still served.
        await kept.send(encode_address(*MIX_B), b"\0" * 2413)
        # The topology changed: mix A is no longer a first-layer node.
        refused = await self.assertFailure(kept.send(encode_address(*MIX_A), b"\0" * 2413), api.RemoteError)
        self.assertEqual(refused.code, api.ErrorCode.UNKNOWN_FIRST_HOP)
        # The invite codes changed.
        session = await self.connect(port)
        error = await self.assertFailure(ensureDeferred(session.register(SigningKey.generate(),
                                                                         invite=b"first-code")),
                                         api.RemoteError)
        self.assertEqual(error.code, api.ErrorCode.INVITE_REQUIRED)
        session = await self.connect(port)
        await session.register(SigningKey.generate(), invite=b"second-code")

        process.signalProcess(signal.SIGTERM)
        code = await child.ended
        self.assertEqual(code, 0, child.output)
        self.assertIn("Main loop terminated", self.read_log())
