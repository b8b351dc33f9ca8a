"""
The SOCKS5 port and the ``socks5`` backend end to end through an
in-process mixnet: ``curl --socks5-hostname`` fetches over TLS (a test
CA) from a local HTTPS server.
"""

import hashlib
import os
import random
import shutil

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web.static import File

from prometheus_client import generate_latest
from zope.interface import implementer

from nymprov.client import ClientKeys, NymClient
from nymprov.metrics import NodeMetrics
from nymprov.backends.socks5.policy import ExitPolicy
from nymprov.client.socks5.server import Socks5Factory, socks_reply
from nymprov.client.socks5.streams import MixStreams

from tests.socks_support import listen_https, make_test_ca, write_policy
from tests.support import wait_for
from tests.test_e2e_backends import InProcessMixnet

MARKER = b"NYMPROV-PLAINTEXT-MARKER-"


class _Socks5Net(TestCase):
    timeout = 1200

    async def _setup(self, size, policy_lines=None):
        curl = shutil.which("curl")
        if curl is None:
            raise SkipTest("curl is not installed")
        self.curl = curl
        directory = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(directory, "site"))
        body = MARKER + os.urandom(size - len(MARKER))
        with open(os.path.join(directory, "site", "file.bin"), "wb") as f:
            f.write(body)
        self.digest = hashlib.sha256(body).hexdigest()
        self.ca, cert, key = make_test_ca(directory)
        listening = await listen_https(self, File(os.path.join(directory, "site")), cert, key)
        self.https_port = listening.getHost().port
        if policy_lines is None:
            policy_lines = [f"localhost {self.https_port}", f"127.0.0.1 {self.https_port}"]
        policy = write_policy(directory, policy_lines)
        self.net = net = InProcessMixnet(self, "socks5", [f"policy={policy}"])
        await net.start()
        client = NymClient(ClientKeys.generate(), net.topology, net.home_node.identity, reactor=reactor,
                           mean_delay=0.0, pull_interval=0.1, shaped=False, loop_rate=0)
        await client.start()
        self.addCleanup(client.stop)
        self.streams = MixStreams(client, net.service_node.identity, reactor, rto=2.0)
        self.addCleanup(self.streams.close)
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Socks5Factory(self.streams, reactor))
        self.addCleanup(port.stopListening)
        self.socks_port = port.getHost().port
        self.directory = directory

    def _curl(self, url, out, *extra):
        return getProcessOutputAndValue(self.curl, [
            "-sS", "--max-time", "900", "--socks5-hostname", f"127.0.0.1:{self.socks_port}",
            "--cacert", self.ca, "-o", out, *extra, url], env=dict(os.environ))



class Socks5EndToEndTests(_Socks5Net):
    async def test_fetch_over_tls(self):
        """1 MiB arrives byte-identical; the provider's files hold no plaintext of it."""
        await self._setup(1024 * 1024)
        out = os.path.join(self.directory, "got.bin")
        stdout, stderr, code = await self._curl(f"https://localhost:{self.https_port}/file.bin", out)
        self.assertEqual(code, 0, stderr)
        with open(out, "rb") as f:
            self.assertEqual(hashlib.sha256(f.read()).hexdigest(), self.digest)
        backend = self.net.services["service"].backend
        self.assertGreater(backend.counters.get("socks5.streams_opened"), 0)
        await wait_for(lambda: all(not s.streams for s in backend.sessions.values()),
                       "the provider to close the stream", limit=30)
        for root, _, files in os.walk(self.net.directory):
            for name in files:
                with open(os.path.join(root, name), "rb") as f:
                    self.assertNotIn(MARKER, f.read(), name)


class _Raw(Protocol):
    """Writes ``data``, collects the answer, fires ``done`` with it once closed."""

    def __init__(self, data, hang_up):
        self.data, self.hang_up = data, hang_up
        self.received = b""
        self.done = Deferred()

    def connectionMade(self):
        self.transport.write(self.data)
        if self.hang_up:
            self.transport.loseConnection()

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason):
        self.done.callback(self.received)


def malformed_requests(rng, port):
    """``(bytes, expected answer or None for no check, hang up ourselves)``: 1,000 of them."""
    name = b"localhost"
    good_request = b"\x05\x01\x00\x03" + bytes([len(name)]) + name + port.to_bytes(2, "big")
    kinds = [
        lambda: (bytes([rng.choice([0, 4, 6, 0x47, 0xFF]), 1, 0]), b"", False),  # bad version: closed
        lambda: (b"\x05\x01" + bytes([rng.randrange(1, 255)]), b"\x05\xff", False),  # no acceptable method
        lambda: (b"\x05\x01\x00\x04" + good_request[1:], b"\x05\x00" + socks_reply(1), False),  # bad version
        lambda: (b"\x05\x01\x00\x05" + bytes([rng.choice([2, 3, 9])]) + good_request[2:],
                 b"\x05\x00" + socks_reply(7), False),  # BIND, UDP or unknown: command not supported
        lambda: (b"\x05\x01\x00\x05\x01\x00" + bytes([rng.choice([0, 2, 5, 0xFF])]) + b"\x01" * 8,
                 b"\x05\x00" + socks_reply(8), False),  # unknown address type
        lambda: (b"\x05\x01\x00\x05\x01\x00\x03\x04a b!\x01\xbb", b"\x05\x00" + socks_reply(1), False),  # bad name
        lambda: (b"\x05\x01\x00\x05\x01\x00\x03" + bytes([len(name)]) + name + b"\x00\x00",
                 b"\x05\x00" + socks_reply(1), False),  # port 0
        lambda: (b"\x05\x01\x00" + good_request[: rng.randrange(1, len(good_request) - 1)], None, True),  # truncated
        # The longest greeting, a bad name, bytes after it: refused on the name.
        lambda: (b"\x05\xff" + bytes(255) + b"\x05\x01\x00\x03\x05a!b!c\x01\xbb" + b"x" * 600,
                 b"\x05\x00" + socks_reply(1), False),
    ]
    return [rng.choice(kinds)() for _ in range(1000)]


class Socks5RefusalTests(_Socks5Net):
    async def _raw(self, data, hang_up=False):
        protocol = _Raw(data, hang_up)
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.socks_port), protocol)
        return await protocol.done

    async def test_malformed_requests_refused(self):
        """1,000 malformed requests get the RFC's reply codes; the client and provider keep serving."""
        await self._setup(64 * 1024)
        rng = random.Random(18)
        requests = malformed_requests(rng, self.https_port)
        for data, expected, hang_up in requests:
            answer = await self._raw(data, hang_up)
            if expected is not None:
                self.assertEqual(answer, expected, data)
        reasons = ("bad_version", "no_method", "bad_request", "bad_command", "bad_address_type", "bad_name",
                   "bad_port")
        refused = sum(self.streams.counters.get("socks5.local_refused", reason) for reason in reasons)
        self.assertEqual(refused, sum(1 for _, _, hang_up in requests if not hang_up))
        self.assertEqual(self.streams.streams, {})
        self.assertEqual(self.net.services["service"].backend.sessions, {})
        out = os.path.join(self.directory, "got.bin")
        _, stderr, code = await self._curl(f"https://localhost:{self.https_port}/file.bin", out)
        self.assertEqual(code, 0, stderr)

    async def test_policy_refusals(self):
        """Outside the policy, or a name that resolves to loopback unnamed: not allowed (2), counted."""
        await self._setup(64 * 1024)
        backend = self.net.services["service"].backend
        request = b"\x05\x01\x00\x05\x01\x00\x03\x0bexample.org\x01\xbb"
        self.assertEqual(await self._raw(request), b"\x05\x00" + socks_reply(2))
        self.assertEqual(backend.counters.get("socks5.refused", "policy"), 1)
        # The node's counters are what its stats line and /metrics serve.
        node = self.net.services["service"]
        self.assertIs(backend.counters, node.counters)
        self.assertIn("nymprov_socks5_refused_total{reason=\"policy\"} 1.0",
                      generate_latest(NodeMetrics(node.counters).registry).decode())
        # localhost is named for another port than the HTTPS server's, 127.0.0.1 not at all for it.
        backend.policy = ExitPolicy.parse(f"localhost {self.https_port + 1}\n")
        request = b"\x05\x01\x00\x05\x01\x00\x03\x09localhost" + (self.https_port + 1).to_bytes(2, "big")
        self.assertEqual(await self._raw(request), b"\x05\x00" + socks_reply(2))
        self.assertEqual(backend.counters.get("socks5.refused", "forbidden_address"), 1)

    async def test_vanished_program_closes_the_stream(self):
        """A local program that opens a stream and disappears: the provider closes it and frees its state."""
        await self._setup(64 * 1024)
        backend = self.net.services["service"].backend
        protocol = _Raw(b"\x05\x01\x00\x05\x01\x00\x03\x09localhost" + self.https_port.to_bytes(2, "big"), False)
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.socks_port), protocol)
        await wait_for(lambda: protocol.received == b"\x05\x00" + socks_reply(0), "the stream to open")
        self.assertEqual(backend.counters.get("socks5.streams_opened"), 1)
        protocol.transport.abortConnection()
        await wait_for(lambda: all(not s.streams for s in backend.sessions.values()),
                       "the provider to close the stream", limit=30)
        self.assertEqual(self.streams.streams, {})


class _HangUp(Protocol):
    """A site that resets every connection at once."""

    def connectionMade(self):
        self.transport.abortConnection()


@implementer(IHalfCloseableProtocol)
class _HalfOpen(_Raw):
    """A program that keeps its side open after the site's end of data."""

    def readConnectionLost(self):
        self.read_closed = True

    def writeConnectionLost(self):
        pass


@implementer(IHalfCloseableProtocol)
class _DigestAtEnd(Protocol):
    """A site that reads to the end of what it is sent, then answers its SHA-256."""

    def connectionMade(self):
        self.hash = hashlib.sha256()

    def dataReceived(self, data):
        self.hash.update(data)

    def readConnectionLost(self):
        self.transport.write(self.hash.hexdigest().encode())
        self.transport.loseConnection()

    def writeConnectionLost(self):
        pass


class _WriteThenShut(_Raw):
    def connectionMade(self):
        self.transport.write(self.data)
        self.transport.loseWriteConnection()


class _NeverReads(Protocol):
    """A site that accepts and never reads."""

    # Kept: a connection that reads nothing is in no reactor's list, and
    # would be collected (and closed) with its last reference.
    connections = []

    def connectionMade(self):
        self.connections.append(self)
        self.transport.pauseProducing()


class _Floods(_Raw):
    """A program that, once its stream is open, writes as fast as its transport takes it."""

    def dataReceived(self, data):
        self.received += data
        if self.received.endswith(socks_reply(0)) and not hasattr(self, "written"):
            self.written = 0
            self.transport.registerProducer(self, True)
            self.resumeProducing()

    def resumeProducing(self):
        self.paused = False
        while not self.paused and self.written < 64 * 1024 * 1024:
            self.transport.write(b"x" * 65536)
            self.written += 65536

    def pauseProducing(self):
        self.paused = True

    def stopProducing(self):
        self.paused = True


class Socks5BackPressureTests(_Socks5Net):
    async def test_a_site_that_never_reads(self):
        """
        A program floods a site that never reads: the provider stops
        delivering the stream to the site's connection once its buffer is
        full (it wrote every frame, and its memory grew without bound), the
        client stops reading the program, and what waits at the provider is
        at most twice the window of frames.  On the way, more than a window
        goes up: the client took the program's bytes again only on a frame
        with data, never on an ACK, so every upload stalled after its first
        window.
        """
        await self._setup(1024)
        site = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Factory.forProtocol(_NeverReads))
        self.addCleanup(site.stopListening)
        self.addCleanup(lambda: [c.transport.abortConnection() for c in _NeverReads.connections])
        port = site.getHost().port
        backend = self.net.services["service"].backend
        backend.policy = ExitPolicy.parse(f"127.0.0.1 {port}\n")
        program = _Floods(b"\x05\x01\x00\x05\x01\x00\x01\x7f\x00\x00\x01" + port.to_bytes(2, "big"), False)
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.socks_port), program)

        def relay():
            relays = [r for session in backend.sessions.values() for r in session.streams.values()]
            return relays[0] if relays else None

        await wait_for(lambda: relay() is not None and relay().endpoint.delivery_paused,
                       "the provider to pause the stream", limit=120)
        await wait_for(lambda: program.paused, "the client to stop reading the program", limit=60)
        endpoint = relay().endpoint
        self.assertLessEqual(len(endpoint._held) + len(endpoint._early), 2 * backend.window)
        transport = relay().tcp.transport
        self.assertLess(len(transport.dataBuffer) + transport._tempDataLen, 2 * 1024 * 1024)
        self.assertFalse(endpoint.closed)
        program.transport.abortConnection()


class Socks5StopTests(_Socks5Net):
    async def test_program_half_closes(self):
        """
        A program that ends its writing (shutdown(SHUT_WR), as `nc -N`
        does) still reads the answer: its end of data is the stream's FIN,
        not the end of the connection (the client closed it whole, and
        the answer was lost).  The 20,000 bytes come in the handshake's
        write: bytes after a complete request are the stream's, not an
        oversize handshake.
        """
        await self._setup(1024)
        site = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Factory.forProtocol(_DigestAtEnd))
        self.addCleanup(site.stopListening)
        port = site.getHost().port
        self.net.services["service"].backend.policy = ExitPolicy.parse(f"127.0.0.1 {port}\n")
        body = os.urandom(20000)
        protocol = _WriteThenShut(
            b"\x05\x01\x00\x05\x01\x00\x01\x7f\x00\x00\x01" + port.to_bytes(2, "big") + body, False)
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.socks_port), protocol)
        answer = await protocol.done
        self.assertEqual(answer, b"\x05\x00" + socks_reply(0) + hashlib.sha256(body).hexdigest().encode())


    async def test_stop_with_a_stream_whose_site_hung_up(self):
        """
        The site reset its connection, the stream waits for the client's
        FIN, and the provider stops (SIGTERM): the stream is reset and
        freed, and the stop does not fail (it raised NotConnectingError
        from a connector long connected, leaving the rest of the stop
        undone).
        """
        await self._setup(1024)
        site = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Factory.forProtocol(_HangUp))
        self.addCleanup(site.stopListening)
        port = site.getHost().port
        node = self.net.services["service"]
        backend = node.backend
        backend.policy = ExitPolicy.parse(f"127.0.0.1 {port}\n")
        protocol = _HalfOpen(b"\x05\x01\x00\x05\x01\x00\x01\x7f\x00\x00\x01" + port.to_bytes(2, "big"), False)
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.socks_port), protocol)
        await wait_for(lambda: getattr(protocol, "read_closed", False)
                       and any(relay.tcp is None for session in backend.sessions.values()
                               for relay in session.streams.values()), "the site to hang up", limit=30)
        relays = [relay for session in backend.sessions.values() for relay in session.streams.values()]
        await node.stopService()
        self.assertTrue(all(relay.endpoint.closed for relay in relays))
        self.assertEqual(backend.sessions, {})
        self.assertEqual(self.flushLoggedErrors(), [])


class Socks5LargeTests(_Socks5Net):
    async def test_ten_mib(self):
        """10 MiB arrives byte-identical (about 25 s in-process with zero delays)."""
        await self._setup(10 * 1024 * 1024)
        out = os.path.join(self.directory, "got.bin")
        _, stderr, code = await self._curl(f"https://localhost:{self.https_port}/file.bin", out)
        self.assertEqual(code, 0, stderr)
        with open(out, "rb") as f:
            self.assertEqual(hashlib.sha256(f.read()).hexdigest(), self.digest)

    async def test_twenty_concurrent(self):
        """20 concurrent downloads of 256 KiB, each its own stream, each byte-identical."""
        await self._setup(256 * 1024)
        url = f"https://localhost:{self.https_port}/file.bin"
        outs = [os.path.join(self.directory, f"got-{i}.bin") for i in range(20)]
        results = await gatherResults([self._curl(url, o) for o in outs])
        for (_, stderr, code), o in zip(results, outs):
            self.assertEqual(code, 0, stderr)
            with open(o, "rb") as f:
                self.assertEqual(hashlib.sha256(f.read()).hexdigest(), self.digest)


class _Echo(Protocol):
    def dataReceived(self, data):
        self.transport.write(data)


class _Optimistic(Protocol):
    """
    Sends its first bytes before the SOCKS reply, as optimistic clients
    (Tor Browser's optimistic data, a TLS client in a hurry) do: after the
    method reply, in a write of their own while the stream is opening.
    """

    def __init__(self, request, early, then):
        self.request, self.early, self.then = request, early, then
        self.received = b""
        self.then_sent = False
        self.echoed = Deferred()

    def connectionMade(self):
        self.transport.write(b"\x05\x01\x00")

    def dataReceived(self, data):
        first = not self.received
        self.received += data
        if first:  # the method reply: the request, then the early bytes apart
            self.transport.write(self.request)
            reactor.callLater(0, self.transport.write, self.early)
        if not self.then_sent and self.received.startswith(b"\x05\x00" + socks_reply(0)):
            self.then_sent = True
            self.transport.write(self.then)
        expected = b"\x05\x00" + socks_reply(0) + self.early + self.then
        if self.received == expected and not self.echoed.called:
            self.echoed.callback(self.received)

    def connectionLost(self, reason):
        if not self.echoed.called:
            self.echoed.errback(AssertionError(f"closed after {self.received!r}"))


class Socks5EarlyDataTests(_Socks5Net):
    async def test_bytes_sent_before_the_reply_arrive_in_order(self):
        """
        Bytes a local program sends while its stream is still opening reach
        the server, before what it sends after the reply: neither the
        client (which dropped them while opening) nor the provider (which
        dropped DATA that came before its TCP connect completed) loses them.
        """
        echo = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Factory.forProtocol(_Echo))
        self.addCleanup(echo.stopListening)
        port = echo.getHost().port
        await self._setup(1024, policy_lines=[f"localhost {port}", f"127.0.0.1 {port}"])
        request = b"\x05\x01\x00\x03\x09localhost" + port.to_bytes(2, "big")
        protocol = _Optimistic(request, b"early bytes|", b"after the reply")
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.socks_port), protocol)
        d = protocol.echoed
        d.addTimeout(60, reactor)
        await d
        protocol.transport.loseConnection()
