"""Tests for nymprov.backends.webproxy: codecs, the allow-list and fetches on loopback."""

import os

from hypothesis import given, settings, strategies as st
from nacl.public import PrivateKey
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from nymprov.backends.surbreply import ServiceBusy, decode_fragment, encode_fragment, encode_service_request, open_reply
from nymprov.backends.webproxy import (
    CodecError,
    HttpResponse,
    ProxyError,
    WebProxyProvider,
    decode_http_request,
    decode_reply,
    encode_error,
    encode_http_request,
    encode_response,
    parse_allow_list,
)
from nymprov.tools.testnet import _free_ports
from nymprov.wire.envelope import decode_envelope

from .test_backend_surbreply import TOPOLOGY, RecordingSender, final, make_surb, walk

headers = st.lists(st.tuples(st.binary(max_size=40), st.binary(max_size=40)), max_size=5)


class CodecTests(SynchronousTestCase):
    """Requests and replies round-trip; garbage raises CodecError only."""

    @settings(max_examples=100)
    @given(st.sampled_from([b"GET", b"POST"]), st.text(max_size=80), headers, st.binary(max_size=200))
    def test_request(self, method, url, pairs, body):
        """An encoded HTTP request decodes to its parts."""
        self.assertEqual(decode_http_request(encode_http_request(method, url, pairs, body)),
                         (method, url, pairs, body))

    @settings(max_examples=100)
    @given(st.integers(100, 599), st.binary(max_size=30), headers, st.binary(max_size=200), st.booleans())
    def test_response(self, status, phrase, pairs, body, truncated):
        """An encoded response decodes to an equal HttpResponse."""
        reply = decode_reply(encode_response(HttpResponse(status, phrase, pairs, body, truncated)))
        self.assertEqual((reply.status, reply.phrase, reply.headers, reply.body, reply.truncated),
                         (status, phrase, pairs, body, truncated))

    def test_error(self):
        """An error reply decodes to a ProxyError with its reason and detail."""
        error = decode_reply(encode_error("not_allowed", "http://x:1"))
        self.assertIsInstance(error, ProxyError)
        self.assertEqual((error.reason, error.detail), ("not_allowed", "http://x:1"))

    @settings(max_examples=200)
    @given(st.binary(max_size=40))
    def test_garbage(self, data):
        """Arbitrary bytes decode or raise CodecError, nothing else."""
        for decode in (decode_reply, decode_http_request):
            try:
                decode(data)
            except CodecError:
                pass

    def test_allow_list(self):
        """Entries normalise scheme, host case and default ports; bad ones are named."""
        self.assertEqual(parse_allow_list("HTTP://Example.org, https://[::1]:8443,"),
                         {("http", "example.org", 80), ("https", "::1", 8443)})
        self.assertEqual(parse_allow_list(""), frozenset())
        for bad in ("ftp://a", "http://u:p@a", "http://a:99999", "nohost"):
            self.assertRaises(ValueError, parse_allow_list, bad)


class Slow(Resource):
    """Counts requests to /big (100 KB) and leaves /slow unanswered."""

    isLeaf = True

    def __init__(self):
        Resource.__init__(self)
        self.requests = []
        self.hanging = []

    def render_GET(self, request):
        self.requests.append(request.path)
        if request.path == b"/slow":
            self.hanging.append(request)
            return NOT_DONE_YET
        return b"x" * 100_000


class FetchTests(TestCase):
    """The proxy against a real loopback server."""

    async def proxy(self, **settings):
        self.resource = Slow()
        site = Site(self.resource)
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site)
        self.addCleanup(port.stopListening)
        self.base = f"http://127.0.0.1:{port.getHost().port}"
        self.sender = RecordingSender()
        allowed = parse_allow_list(self.base)
        backend = WebProxyProvider(self.sender, TOPOLOGY, reactor, allowed=allowed, **settings)
        self.addCleanup(backend.stopService)
        return backend

    async def ask(self, backend, url, surbs=4):
        """Deliver a GET of ``url``; returns the decoded answer once all SURBs it needs are used."""
        key = PrivateKey.generate()
        request = encode_service_request([make_surb() for _ in range(surbs)],
                                 encode_http_request(b"GET", url), bytes(key.public_key))
        del self.sender.sent[:]
        await backend.deliver(final(encode_fragment(os.urandom(16), 0, 1, request)))
        while True:
            parts = {}
            for _, packet in self.sender.sent:
                fragment = decode_fragment(decode_envelope(walk(packet)).body)
                count = fragment.count
                parts[fragment.index] = fragment.chunk
            if parts and len(parts) == count:
                return decode_reply(open_reply(b"".join(parts[i] for i in range(count)), key))
            d = Deferred()
            reactor.callLater(0.01, d.callback, None)
            await d

    async def test_not_allowed(self):
        """A URL off the allow-list is answered not_allowed and never requested."""
        backend = await self.proxy()
        port = int(self.base.rsplit(":", 1)[1])
        answer = await self.ask(backend, f"http://127.0.0.1:{port + 1}/big")
        self.assertEqual(answer.reason, "not_allowed")
        answer = await self.ask(backend, "ftp://127.0.0.1/big")
        self.assertEqual(answer.reason, "bad_request")
        self.assertEqual(self.resource.requests, [])

    async def test_truncated_to_surbs(self):
        """A body larger than the SURBs carry is cut to fit and marked truncated."""
        backend = await self.proxy()
        answer = await self.ask(backend, self.base + "/big", surbs=4)
        self.assertEqual(answer.status, 200)
        self.assertTrue(answer.truncated)
        self.assertGreater(len(answer.body), 6000)
        self.assertEqual(answer.body, b"x" * len(answer.body))

    async def test_timeout(self):
        """A server that does not answer gets a timeout reply within the limit."""
        backend = await self.proxy(timeout=0.3)
        answer = await self.ask(backend, self.base + "/slow")
        self.assertEqual(answer.reason, "timeout")
        self.assertEqual(self.resource.requests, [b"/slow"])

    async def test_connect_failed(self):
        """An allowed origin where nothing listens gets connect_failed."""
        [free] = _free_ports(1)
        sender = RecordingSender()
        self.sender = sender
        backend = WebProxyProvider(sender, TOPOLOGY, reactor,
                                   allowed=parse_allow_list(f"http://127.0.0.1:{free}"))
        self.addCleanup(backend.stopService)
        answer = await self.ask(backend, f"http://127.0.0.1:{free}/")
        self.assertEqual(answer.reason, "connect_failed")

    async def test_busy(self):
        """Past max-concurrent fetches, a request is refused with ServiceBusy and not answered."""
        backend = await self.proxy(max_concurrent=1, timeout=0.3)
        request = encode_service_request([make_surb()], encode_http_request(b"GET", self.base + "/slow"))
        await backend.deliver(final(encode_fragment(b"1" * 16, 0, 1, request)))
        with self.assertRaises(ServiceBusy):
            await backend.deliver(final(encode_fragment(b"2" * 16, 0, 1, request)))
        while not self.sender.sent:
            d = Deferred()
            reactor.callLater(0.01, d.callback, None)
            await d
        self.assertEqual(len(self.sender.sent), 1)
