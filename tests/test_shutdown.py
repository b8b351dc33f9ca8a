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
import sys

from nacl.signing import SigningKey
from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IPullProducer
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from nymprov.client import session as provider_client
from nymprov.keys import load_keys
from nymprov.sphinx import Destination, Node, build_packet, encode_address
from nymprov.wire.frames import encode_frame

from tests.support import wait_for
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
