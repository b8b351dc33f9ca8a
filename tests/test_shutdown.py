"""
SIGTERM through the real path: a provider process (``nym-provider run`` and
``twistd -n nym-provider``) with unwrap worker processes, thousands of
packets in flight on the mix link, stopped by SIGTERM.  Every packet it read
is stored or counted as dropped in the final counters it logs; after a
restart a client pulls exactly the stored ones.
"""

import ast
import os
import re
import signal
import sqlite3
import sys
import time

from nacl.signing import SigningKey
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IPullProducer
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, readBody
from zope.interface import implementer

from nymprov.client import session as provider_client
from nymprov.keys import load_keys
from nymprov.sphinx import Destination, Node, build_packet, encode_address
from nymprov.wire.frames import encode_frame

from tests.support import WAIT_LIMIT, wait_for
from tests.test_crash import ProviderProcess

PACKETS = 4000

#: The last line a provider logs at stop: its counters, as its stats line.
_FINAL = re.compile(r"nym-provider stopped; stats: (\{.*?\}) store=")

_PROVIDER_OPTIONS = [
    "--mix-listen", "tcp:0:interface=127.0.0.1",
    "--client-listen", "tcp:0:interface=127.0.0.1",
    "--no-client-tls",
    "--stats-interval", "0",
    "--unwrap-workers", "2",
    "--http-listen", "tcp:0:interface=127.0.0.1",
    "--admin-socket", "none",
]

_TWISTD = "from twisted.scripts.twistd import run; run()"


@implementer(IPullProducer)
class FramePump:
    """
    Writes chunks of frames each time the transport has written the last
    one out; ``written`` fires once the last chunk has left the transport
    for the kernel (the node reads the rest from there).
    """

    def __init__(self, transport, chunks):
        self._transport = transport
        self._chunks = list(reversed(chunks))
        self.written = Deferred()
        transport.registerProducer(self, False)

    def resumeProducing(self):
        if self._chunks:
            self._transport.write(self._chunks.pop())
        elif not self.written.called:
            self._transport.unregisterProducer()
            self.written.callback(None)

    def stopProducing(self):
        self._chunks = []


def final_counters(log):
    """The counters in the final stats line of ``log`` (bytes)."""
    text = log.decode("utf-8", "replace")
    found = _FINAL.findall(text)
    if len(found) != 1:
        raise AssertionError(f"expected one final stats line, found {len(found)}:\n{text[-3000:]}")
    return ast.literal_eval(found[0])


class SigtermTests(TestCase):
    """SIGTERM during ingest loses nothing that was read, uncounted."""

    timeout = 180

    def spawn(self, command, data_dir):
        process = ProviderProcess()
        if command == "run":
            args = [sys.executable, "-m", "nymprov", "run", "--data-dir", data_dir] + _PROVIDER_OPTIONS
        else:
            pidfile = os.path.join(os.path.abspath(self.mktemp()) + ".pid")
            args = [sys.executable, "-c", _TWISTD, "-n", "--pidfile", pidfile, "nym-provider",
                    "--data-dir", data_dir] + _PROVIDER_OPTIONS
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
        transport = reactor.spawnProcess(process, sys.executable, args, env=env)
        self.addCleanup(lambda: process.ended.called or transport.signalProcess("KILL"))
        return process, transport

    def assertStoppedCleanly(self, command, reason, log):
        """
        ``run`` exits 0 after SIGTERM; twistd, once stopped, ends itself
        with the signal it got, as its parent would expect.
        """
        tail = log.decode("utf-8", "replace")[-3000:]
        if command == "run":
            self.assertEqual(reason.exitCode, 0, tail)
        else:
            self.assertEqual(reason.signal, signal.SIGTERM, tail)
            self.assertIn("Server Shut Down.", tail)

    def test_run(self):
        """``nym-provider run`` with 2 worker processes, SIGTERM mid-ingest."""
        return ensureDeferred(self.sigterm_during_ingest("run"))

    def test_twistd(self):
        """``twistd -n nym-provider`` with 2 worker processes, SIGTERM mid-ingest."""
        return ensureDeferred(self.sigterm_during_ingest("twistd"))

    async def sigterm_during_ingest(self, command):
        data_dir = os.path.abspath(self.mktemp())
        process, transport = self.spawn(command, data_dir)
        await wait_for(lambda: len(process.ports) == 2, "the provider to listen")

        host, client_port = process.ports["client API"]
        session = await provider_client.connect(reactor, host, client_port)
        key = SigningKey.generate()
        await session.register(key)
        address = bytes(key.verify_key)
        await session.close()

        keys = load_keys(data_dir)
        mix_host, mix_port = process.ports["mix link"]
        route = [Node(encode_address(mix_host, mix_port), keys.sphinx.public_bytes)]
        sent = [b"sigterm test message %d" % i for i in range(PACKETS)]
        frames = [encode_frame(build_packet(m, route, [0], Destination(address, bytes(16)))) for m in sent]

        link = Protocol()
        await connectProtocol(TCP4ClientEndpoint(reactor, mix_host, mix_port), link)
        pump = FramePump(link.transport, [b"".join(frames[i:i + 100]) for i in range(0, PACKETS, 100)])
        # Once every frame has left for the kernel, thousands are in flight:
        # in the kernel's buffers, the node's, the workers' and the store's.
        await pump.written
        transport.signalProcess("TERM")
        reason = await process.ended
        link.transport.abortConnection()
        log = process.log
        self.assertStoppedCleanly(command, reason, log)

        counters = final_counters(log)
        received = counters.get("packets.received.mix", 0)
        delivered = counters.get("packets.delivered", 0)
        dropped = {k: v for k, v in counters.items() if k.startswith("packets.dropped.")}
        self.assertGreater(received, 0)
        # Every packet read is stored or counted as dropped, by reason.
        self.assertEqual(received, delivered + sum(dropped.values()), counters)

        # Restarted, the provider hands the client exactly what it stored.
        process, transport = self.spawn(command, data_dir)
        await wait_for(lambda: len(process.ports) == 2, "the restarted provider")
        host, client_port = process.ports["client API"]
        session = await provider_client.connect(reactor, host, client_port)
        await session.register(key)
        pulled = []
        while True:
            batch = await session.pull(64)
            if not batch.messages:
                break
            pulled += batch.messages
            await session.ack(batch.lease_id)
        await session.close()
        transport.signalProcess("TERM")
        reason = await process.ended
        self.assertStoppedCleanly(command, reason, process.log)
        self.assertEqual(len(pulled), delivered)
        self.assertEqual(len(set(pulled)), len(pulled))
        self.assertTrue(set(pulled) <= set(sent))


_HTTP_LISTENING = re.compile(r"Listening on 127\.0\.0\.1:(\d+) \(operator HTTP API")


class SigtermWithSlowStoreTests(TestCase):
    """
    SIGTERM while the store's write of a delivered message is still in
    progress: the stop waits for it, and its SURB-ACK leaves before the
    sender closes.
    """

    timeout = 60

    async def packets_received(self, port):
        response = await Agent(reactor).request(b"GET", f"http://127.0.0.1:{port}/metrics".encode())
        body = (await readBody(response)).decode("utf-8")
        for family in text_string_to_metric_families(body):
            for sample in family.samples:
                if sample.name == "nymprov_packets_received_total" and sample.labels.get("source") == "mix":
                    return sample.value
        return 0

    async def test_sigterm_waits_for_the_write_and_acks(self):
        """
        The stop used to go on at once past a delivery still being written
        (the node counted only Deferreds without a result, and a delivery
        waiting on the store already had one, paused): the sender closed,
        the write then committed, and the message was stored with its
        SURB-ACK dropped, so the sender would retransmit a duplicate.
        """
        from nymprov.sphinx import SURB, FinalHop, KeyPair, PacketSize, process_packet
        from nymprov.wire.envelope import decode_envelope, encode_envelope
        from tests.test_integration import FirstLayerMix

        arrivals = []
        mix_port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Factory.forProtocol(lambda: FirstLayerMix(arrivals)))
        self.addCleanup(mix_port.stopListening)
        first_layer = mix_port.getHost().port
        mix_address = encode_address("127.0.0.1", first_layer)
        mix_key = KeyPair.generate()

        data_dir = os.path.abspath(self.mktemp())
        process = ProviderProcess()
        args = [sys.executable, "-m", "nymprov", "run", "--data-dir", data_dir,
                "--first-layer", f"127.0.0.1:{first_layer}"] + _PROVIDER_OPTIONS
        args[args.index("--unwrap-workers") + 1] = "0"
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
        transport = reactor.spawnProcess(process, sys.executable, args, env=env)
        self.addCleanup(lambda: process.ended.called or transport.signalProcess("KILL"))
        await wait_for(lambda: len(process.ports) == 2 and _HTTP_LISTENING.search(process.log.decode()),
                       "the provider to listen")
        http_port = int(_HTTP_LISTENING.search(process.log.decode()).group(1))

        host, client_port = process.ports["client API"]
        session = await provider_client.connect(reactor, host, client_port)
        key = SigningKey.generate()
        await session.register(key)
        await session.close()

        keys = load_keys(data_dir)
        mix_host, node_port = process.ports["mix link"]
        surb = SURB.create([Node(mix_address, mix_key.public_bytes)], [0], Destination(b"\x05" * 32, b"\x06" * 16))
        ack_hop, ack_packet = surb.use(encode_envelope(b"A" * 16), PacketSize.ACK.payload_size)
        packet = build_packet(
            encode_envelope(b"written while stopping", ack_hop, ack_packet),
            [Node(encode_address(mix_host, node_port), keys.sphinx.public_bytes)], [0],
            Destination(bytes(key.verify_key), bytes(16)))

        # Another connection holds the file's write lock: the provider's
        # write waits (SQLite's busy timeout) until the test lets it go.
        holder = sqlite3.connect(os.path.join(data_dir, "nymprov.sqlite"), isolation_level=None)
        self.addCleanup(holder.close)
        holder.execute("BEGIN EXCLUSIVE")
        link = Protocol()
        await connectProtocol(TCP4ClientEndpoint(reactor, mix_host, node_port), link)
        self.addCleanup(link.transport.abortConnection)
        link.transport.write(encode_frame(packet))
        deadline = time.monotonic() + WAIT_LIMIT
        while await self.packets_received(http_port) < 1:
            self.assertLess(time.monotonic(), deadline, "the packet was never read")
            await deferLater(reactor, 0.05, lambda: None)

        transport.signalProcess("TERM")
        await wait_for(lambda: b"stopping: closing connections" in process.log, "the stop to begin")
        holder.execute("COMMIT")
        reason = await process.ended
        log = process.log.decode("utf-8", "replace")
        self.assertEqual(reason.exitCode, 0, log[-3000:])
        counters = final_counters(process.log)
        self.assertEqual(counters.get("packets.delivered"), 1, counters)
        self.assertEqual(counters.get("acks.sent"), 1, counters)
        await wait_for(lambda: arrivals, "the SURB-ACK")
        [(_, ack)] = arrivals
        hop = process_packet(ack, mix_key)
        self.assertIsInstance(hop, FinalHop)
        self.assertEqual(decode_envelope(hop.message()).body, b"A" * 16)


_MIX_FINAL = re.compile(r"nym-mixnode stopped; stats: (\{.*?\})\s*$", re.M)


class MixNodeSigtermTests(TestCase):
    """SIGTERM to a mix node whose unwrap worker holds batches of delayed hops."""

    timeout = 120

    async def test_every_hop_read_is_forwarded_or_counted(self):
        """
        Forward hops with a 20 s delay stream into ``nym-mixnode run`` with a
        worker, and SIGTERM comes as the last frame leaves the generator.
        Every packet read is forwarded (its delay given up) or counted as
        dropped.  (Batches that came back from the worker after the stop
        had begun were put on timers the stop no longer waited for: read,
        and neither sent nor counted.)
        """
        from nymprov.keys import load_or_create_keys
        from nymprov.sphinx import KeyPair
        from nymprov.topology import ProviderNode, Topology, dump_topology

        received = []
        sink = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Factory.forProtocol(lambda: _Counting(received)))
        self.addCleanup(sink.stopListening)
        sink_port = sink.getHost().port
        sink_key = KeyPair.generate()
        workdir = os.path.abspath(self.mktemp())
        data_dir = os.path.join(workdir, "mix")
        os.makedirs(data_dir, mode=0o700)
        keys = load_or_create_keys(data_dir)
        topology = os.path.join(workdir, "topology.json")
        dump_topology(Topology(providers=[ProviderNode(bytes(32), sink_key.public_bytes, "127.0.0.1", sink_port,
                                                       "127.0.0.1", 1)]), topology)
        process = ProviderProcess()
        args = [sys.executable, "-m", "nymprov.cli.mixnode", "run", "--data-dir", data_dir,
                "--mix-listen", "tcp:0:interface=127.0.0.1", "--topology", topology, "--unwrap-workers", "1",
                "--stats-interval", "0", "--http-listen", "none"]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
        transport = reactor.spawnProcess(process, sys.executable, args, env=env)
        self.addCleanup(lambda: process.ended.called or transport.signalProcess("KILL"))
        await wait_for(lambda: "mix link" in process.ports, "the mix node to listen")
        host, port = process.ports["mix link"]
        route = [Node(encode_address(host, port), keys.sphinx.public_bytes),
                 Node(encode_address("127.0.0.1", sink_port), sink_key.public_bytes)]
        frames = [encode_frame(build_packet(b"m%d" % i, route, [int(20e9), 0], Destination(bytes(32), bytes(16))))
                  for i in range(1500)]
        link = Protocol()
        await connectProtocol(TCP4ClientEndpoint(reactor, host, port), link)
        pump = FramePump(link.transport, [b"".join(frames[i:i + 50]) for i in range(0, len(frames), 50)])
        await pump.written
        transport.signalProcess("TERM")
        reason = await process.ended
        link.transport.abortConnection()
        log = process.log.decode("utf-8", "replace")
        self.assertEqual(reason.exitCode, 0, log[-3000:])
        [final] = _MIX_FINAL.findall(log)
        counters = ast.literal_eval(final)
        read = counters.get("packets.received.mix", 0)
        dropped = sum(v for k, v in counters.items() if k.startswith("packets.dropped."))
        self.assertGreater(read, 0)
        self.assertEqual(read, counters.get("packets.forwarded", 0) + dropped, counters)
        # Each forwarded packet reached the next node (a frame of at least
        # the packet's 2413 bytes).
        await wait_for(lambda: sum(map(len, received)) >= counters.get("packets.forwarded", 0) * 2413,
                       "the forwarded packets at the next node")


class _Counting(Protocol):
    """A next node that keeps how many bytes it got."""

    def __init__(self, received):
        self._received = received

    def dataReceived(self, data):
        self._received.append(data)
