"""
A provider process killed with SIGKILL in the middle of ingesting restarts
with a consistent store holding every committed message.
"""

import hashlib
import os
import re
import signal
import sqlite3
import sys
import time

from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import ProcessProtocol, Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from nymprov.client import session as provider_client
from nymprov.keys import load_keys
from nymprov.sphinx import Destination, Node, build_packet, encode_address
from nymprov.storage.sqlite import SQLiteStore
from nymprov.wire.frames import encode_frame

from tests.support import wait_for

from tests.support import WAIT_LIMIT
PACKETS = 1500

_LISTENING = re.compile(r"Listening on ([0-9.]+):(\d+) \((mix link|client API)")


class ProviderProcess(ProcessProtocol):
    """Collects a provider's log and the ports it announces."""

    def __init__(self):
        self.log = b""
        self.ports = {}
        self.ended = Deferred()

    def errReceived(self, data):
        self.log += data
        for host, port, kind in _LISTENING.findall(self.log.decode("utf-8", "replace")):
            self.ports[kind] = (host, int(port))

    outReceived = errReceived

    def processEnded(self, reason):
        # The reason is a Failure even for a clean exit; hand on its value.
        self.ended.callback(reason.value)


class CrashTests(TestCase):
    """
    SIGKILL during ingest loses at most the batch being committed.
    """

    timeout = 120

    def test_sigkill_during_ingest(self):
        """
        After SIGKILL mid-ingest the SQLite file passes its integrity check,
        every stored message is one that was sent, none twice, and a new
        provider process starts on the same data directory.
        """
        return ensureDeferred(self._sigkill_during_ingest())

    def spawn(self, data_dir):
        process = ProviderProcess()
        args = [
            sys.executable, "-m", "nymprov", "run",
            "--data-dir", data_dir,
            "--mix-listen", "tcp:0:interface=127.0.0.1",
            "--client-listen", "tcp:0:interface=127.0.0.1",
            "--no-client-tls",
            "--stats-interval", "0",
            "--http-listen", "none", "--admin-socket", "none",
        ]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
        transport = reactor.spawnProcess(process, sys.executable, args, env=env)
        return process, transport

    async def _sigkill_during_ingest(self):
        data_dir = os.path.abspath(self.mktemp())
        process, transport = self.spawn(data_dir)
        self.addCleanup(lambda: process.ended.called or transport.signalProcess("KILL"))
        await wait_for(lambda: len(process.ports) == 2, "the provider to listen")

        host, client_port = process.ports["client API"]
        session = await provider_client.connect(reactor, host, client_port)
        from nacl.signing import SigningKey

        key = SigningKey.generate()
        await session.register(key)
        address = bytes(key.verify_key)

        keys = load_keys(data_dir)
        mix_host, mix_port = process.ports["mix link"]
        route = [Node(encode_address(mix_host, mix_port), keys.sphinx.public_bytes)]
        sent = [b"crash test message %d" % i for i in range(PACKETS)]
        frames = [encode_frame(build_packet(m, route, [0], Destination(address, bytes(16)))) for m in sent]

        link = Protocol()
        await connectProtocol(TCP4ClientEndpoint(reactor, mix_host, mix_port), link)
        half = PACKETS // 2
        for start in range(0, half, 50):
            link.transport.write(b"".join(frames[start:start + 50]))
            await deferLater(reactor, 0, lambda: None)

        # Once a pull sees committed messages, ingest is under way: send the
        # rest and kill the process while it is still taking them in.
        async def some_committed():
            batch = await session.pull(1)
            return bool(batch.messages)

        deadline = time.monotonic() + WAIT_LIMIT
        while not await some_committed():
            self.assertLess(time.monotonic(), deadline, "nothing was committed")
            await deferLater(reactor, 0.02, lambda: None)
        link.transport.write(b"".join(frames[half:]))
        await deferLater(reactor, 0.01, lambda: None)
        transport.signalProcess("KILL")
        reason = await process.ended
        self.assertEqual(reason.signal, signal.SIGKILL)
        link.transport.abortConnection()
        await session.close()

        db_path = os.path.join(data_dir, "nymprov.sqlite")
        with sqlite3.connect(db_path) as db:
            self.assertEqual(db.execute("PRAGMA integrity_check").fetchone(), ("ok",))
        db.close()

        store = SQLiteStore(reactor, db_path, replay_key_id=hashlib.sha256(keys.sphinx.public_bytes).digest())
        await store.start()
        try:
            _lease, stored = await store.lease(address, PACKETS, time.time() + 3600, 60)
        finally:
            await store.close()
        bodies = [body for _id, body in stored]
        self.assertGreaterEqual(len(bodies), 1)
        self.assertEqual(len(set(bodies)), len(bodies))
        self.assertTrue(set(bodies) <= set(sent))

        # The node comes back on the same data directory and serves them.
        process, transport = self.spawn(data_dir)
        await wait_for(lambda: len(process.ports) == 2, "the restarted provider")
        transport.signalProcess("TERM")
        reason = await process.ended
        self.assertEqual(reason.exitCode, 0, process.log.decode("utf-8", "replace"))
