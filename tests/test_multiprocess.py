"""
Several provider processes on one PostgreSQL database are one provider:
real processes, real loopback TCP, a real server.
"""

import os
import re
import signal
import sys
import time

import psycopg
from nacl.signing import SigningKey
from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import ProcessProtocol, Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from nymprov.client import session as provider_client
from nymprov.keys import load_keys
from nymprov.sphinx import Destination, Node, build_packet, encode_address
from nymprov.wire import clientapi as api
from nymprov.wire.frames import encode_frame

from tests.pgsupport import fresh_schema_url
from tests.provider_process import spawn_provider
from tests.support import WAIT_LIMIT, wait_for

PACKETS = 5000
CLIENTS = 3


def frames_for(process, data_dir, messages):
    """
    Mix-link frames of final-hop packets through ``process``, one per
    ``(address, body)`` in ``messages``.
    """
    keys = load_keys(data_dir)
    host, port = process.ports["mix link"]
    route = [Node(encode_address(host, port), keys.sphinx.public_bytes)]
    return [encode_frame(build_packet(body, route, [0], Destination(address, bytes(16))))
            for address, body in messages]


async def mix_link(process):
    host, port = process.ports["mix link"]
    link = Protocol()
    await connectProtocol(TCP4ClientEndpoint(reactor, host, port), link)
    return link


async def write_frames(link, frames):
    for start in range(0, len(frames), 100):
        link.transport.write(b"".join(frames[start:start + 100]))
        await deferLater(reactor, 0, lambda: None)


class TwoProcessesTests(TestCase):
    """
    Two ``nym-provider run`` processes with their own ports and one
    database.
    """

    timeout = 600

    def setUp(self):
        self.url = fresh_schema_url(self)

    def count(self, query="SELECT count(*) FROM messages", *args):
        with psycopg.connect(self.url, autocommit=True) as connection:
            return connection.execute(query, args or None).fetchone()[0]

    async def session(self, process, address=None, token=None):
        host, port = process.ports["client API"]
        session = await provider_client.connect(reactor, host, port)
        self.addCleanup(session.close)
        if address is not None:
            await session.authenticate(address, token)
        return session

    def test_one_provider(self):
        """
        Clients registered through either process; 5,000 packets split over
        both; a replay sent to the other process refused; a rotated token
        refused on both and the other process's session closed; three
        clients pulling through both while one process is killed with
        SIGKILL: every message acked exactly once, none lost.
        """
        return ensureDeferred(self._one_provider())

    async def _one_provider(self):
        common = ("--store", self.url, "--no-client-tls", "--stats-interval", "0",
                  "--lease-seconds", "10", "--register-rate", "100")
        first, data_dir = await spawn_provider(self, *common)
        second, _ = await spawn_provider(self, *common, data_dir=data_dir)
        processes = [first, second]

        # Registered through one process or the other.
        keys = [SigningKey.generate() for _ in range(CLIENTS)]
        addresses = [bytes(key.verify_key) for key in keys]
        tokens = []
        for number, key in enumerate(keys):
            tokens.append(await (await self.session(processes[number % 2])).register(key))

        # A token rotated through one process is refused on both, and a
        # session that proved the old one on the other process ends.
        await self._rotation_everywhere(first, second)

        # 5,000 packets, each process taking half, for the three clients.
        sent = [b"message %d" % i for i in range(PACKETS)]
        frames = {process: [] for process in processes}
        for number, body in enumerate(sent):
            process = processes[number % 2]
            frames[process].append((addresses[number % CLIENTS], body))
        links = [await mix_link(process) for process in processes]
        built = {process: frames_for(process, data_dir, frames[process]) for process in processes}
        await gatherResults([ensureDeferred(write_frames(link, built[process]))
                             for process, link in zip(processes, links)])
        await wait_for(lambda: self.count() >= PACKETS, "5,000 messages committed", limit=4 * WAIT_LIMIT)
        self.assertEqual(self.count(), PACKETS)

        # Replays sent to the other process, each followed by a fresh
        # packet on the same link: once the fresh ones are stored, the
        # replays have been decided.
        markers = [b"marker A", b"marker B"]
        links[1].transport.write(built[first][0])
        links[1].transport.write(frames_for(second, data_dir, [(addresses[0], markers[0])])[0])
        links[0].transport.write(built[second][0])
        links[0].transport.write(frames_for(first, data_dir, [(addresses[1], markers[1])])[0])
        await wait_for(lambda: self.count() >= PACKETS + 2, "the markers")
        self.assertEqual(self.count(), PACKETS + 2)
        expected = sorted(sent + markers)

        # Three clients pull through both processes at once, each pulling
        # through one and acking through the other; the first process is
        # killed mid-way and the pulls carry on through the second.  An ack
        # whose answer the kill swallowed may or may not have committed:
        # its messages are "unsure", and must be acked by none or once.
        acked, unsure = [], []
        killed = []
        deadline = time.monotonic() + 10 * WAIT_LIMIT

        def maybe_kill():
            if not killed and len(acked) >= PACKETS // 3:
                killed.append(True)
                first.transport.signalProcess("KILL")

        async def puller(number):
            address, token = addresses[number], tokens[number]
            sessions = {}
            turn = number
            while self.count("SELECT messages FROM clients WHERE address = %s", address):
                self.assertLess(time.monotonic(), deadline, "pulls did not empty the inboxes")
                alive = [p for p in processes if not (killed and p is first)]
                pulling_process = alive[turn % len(alive)]
                acking_process = alive[(turn + 1) % len(alive)]
                turn += 1
                batch = None
                try:
                    for process in (pulling_process, acking_process):
                        if process not in sessions:
                            sessions[process] = await self.session(process, address, token)
                    batch = await sessions[pulling_process].pull(64)
                    if not batch.messages:
                        await deferLater(reactor, 0.05, lambda: None)
                        continue
                    deleted = await sessions[acking_process].ack(batch.lease_id)
                except Exception:
                    # Only requests to the killed process may fail.
                    if not killed or first not in (pulling_process, acking_process):
                        raise
                    sessions.pop(first, None)
                    if batch is not None and acking_process is first:
                        unsure.extend(batch.messages)
                    continue
                self.assertEqual(deleted, len(batch.messages))
                acked.extend(batch.messages)
                maybe_kill()

        await gatherResults([ensureDeferred(puller(number)) for number in range(CLIENTS)])
        reason = await first.ended
        self.assertEqual(reason.signal, signal.SIGKILL)
        self.assertEqual(len(set(acked)), len(acked), "a message was acked twice")
        self.assertEqual(set(acked) | set(unsure), set(expected))
        self.assertEqual(len(acked) + len(set(unsure) - set(acked)), len(expected))
        self.assertEqual(self.count(), 0)
        self.assertEqual(self.count("SELECT coalesce(sum(messages), 0) FROM clients"), 0)

    async def _rotation_everywhere(self, first, second):
        key = SigningKey.generate()
        address = bytes(key.verify_key)
        old = await (await self.session(first)).register(key)
        elsewhere = await self.session(first, address, old)
        await elsewhere.pull(1)
        new = await (await self.session(second)).register(key)
        # The session on the first process that proved the old token is
        # closed by the notice from the second.
        here = await self.session(second, address, new)
        await wait_for(lambda: elsewhere.protocol.closed.called, "the stale session to be closed")
        for process in (first, second):
            with self.assertRaises(api.RemoteError) as refused:
                await self.session(process, address, old)
            self.assertEqual(refused.exception.code, api.ErrorCode.BAD_TOKEN)
            await self.session(process, address, new)
        await here.pull(1)


class _Supervised(ProcessProtocol):
    def __init__(self):
        self.log = b""
        self.ended = Deferred()

    def errReceived(self, data):
        self.log += data

    outReceived = errReceived

    def processEnded(self, reason):
        self.ended.callback(reason.value)

    def text(self):
        return self.log.decode("utf-8", "replace")


class SharedPortsTests(TestCase):
    """
    ``nym-provider run --processes 2``: one parent holding the ports, two
    provider processes accepting on them.
    """

    timeout = 300

    def test_processes_share_ports(self):
        """
        Both processes listen on the ports the parent bound; a process
        killed with SIGKILL is started again while the other keeps
        serving; SIGTERM to the parent stops them all, exit code 0.
        """
        return ensureDeferred(self._processes_share_ports())

    async def _processes_share_ports(self):
        url = fresh_schema_url(self)
        data_dir = os.path.abspath(self.mktemp())
        process = _Supervised()
        args = [sys.executable, "-m", "nymprov", "run", "--processes", "2", "--store", url,
                "--data-dir", data_dir, "--no-client-tls", "--unwrap-workers", "0", "--http-listen", "none",
                "--admin-socket", "none",
                "--mix-listen", "tcp:0:interface=127.0.0.1", "--client-listen", "tcp:0:interface=127.0.0.1"]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
        transport = reactor.spawnProcess(process, sys.executable, args, env=env)
        self.addCleanup(lambda: process.ended.called or transport.signalProcess("KILL"))

        try:
            await wait_for(lambda: len(re.findall(r"Listening on .*\(client API", process.text())) == 2
                           or process.ended.called, "both processes to listen")
        except AssertionError:
            raise AssertionError(process.text()[-3000:])
        client_port = int(re.search(r"client API on 127\.0\.0\.1:(\d+)", process.text()).group(1))
        listening = re.findall(r"Listening on 127\.0\.0\.1:(\d+) \(client API", process.text())
        self.assertEqual([int(port) for port in listening], [client_port, client_port])
        pids = [int(pid) for pid in re.findall(r"provider process \d started \(pid (\d+)\)", process.text())]
        self.assertEqual(len(pids), 2)

        key = SigningKey.generate()
        session = await provider_client.connect(reactor, "127.0.0.1", client_port)
        token = await session.register(key)
        await session.close()

        os.kill(pids[0], signal.SIGKILL)
        await wait_for(lambda: "provider process 0 ended" in process.text(), "the supervisor to notice")
        # The survivor takes every connection meanwhile.
        for _ in range(5):
            session = await provider_client.connect(reactor, "127.0.0.1", client_port)
            await session.authenticate(bytes(key.verify_key), token)
            await session.close()
        await wait_for(lambda: len(re.findall(r"provider process 0 started", process.text())) == 2,
                       "process 0 to be started again")
        await wait_for(lambda: len(re.findall(r"Listening on .*\(client API", process.text())) == 3,
                       "the new process to listen")

        transport.signalProcess("TERM")
        reason = await process.ended
        self.assertEqual(reason.exitCode, 0, process.text())
        self.assertEqual(process.text().count("store closed"), 2)

    def test_processes_that_cannot_start(self):
        """
        When the provider processes cannot start (here: no such database),
        the parent stops instead of starting them again forever, exit 1.
        """
        return ensureDeferred(self._processes_that_cannot_start())

    async def _processes_that_cannot_start(self):
        url = fresh_schema_url(self).replace("/postgres?", "/no_such_database?")
        process = _Supervised()
        args = [sys.executable, "-m", "nymprov", "run", "--processes", "2", "--store", url,
                "--data-dir", os.path.abspath(self.mktemp()), "--no-client-tls", "--unwrap-workers", "0",
                "--http-listen", "none", "--admin-socket", "none",
                "--mix-listen", "tcp:0:interface=127.0.0.1", "--client-listen", "tcp:0:interface=127.0.0.1"]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
        transport = reactor.spawnProcess(process, sys.executable, args, env=env)
        self.addCleanup(lambda: process.ended.called or transport.signalProcess("KILL"))
        reason = await process.ended
        self.assertEqual(reason.exitCode, 1, process.text())
        self.assertIn("could not start", process.text())
        self.assertEqual(len(re.findall(r"provider process \d started", process.text())), 2)
