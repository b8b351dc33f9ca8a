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

from nymprov.backends.urlpolicy import fetchable_addresses, parse_url
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
        self.assertEqual(parse_allow_list("http://B\u00fccher.de"), {("http", "xn--bcher-kva.de", 80)})
        self.assertEqual(parse_allow_list(""), frozenset())
        for bad in ("ftp://a", "http://u:p@a", "http://a:99999", "nohost", "http://\u212aelvin.org",
                    "http://127.1", "http://0x7f.0.0.1", "http://[fe80::1%eth0]"):
            self.assertRaises(ValueError, parse_allow_list, bad)


class UrlPolicyTests(SynchronousTestCase):
    """One canonical form, compared and fetched; only public addresses."""

    @settings(max_examples=300)
    @given(st.text(max_size=60), st.sampled_from(["http://", "https://", "HTTP://", ""]))
    def test_canonical_is_a_fixpoint(self, tail, scheme):
        """
        Any text is a URL or a ValueError; a URL's canonical form parses to
        itself, so what is compared is what is fetched.
        """
        try:
            url = parse_url(scheme + tail)
        except ValueError:
            return
        self.assertEqual(parse_url(url.url().decode("ascii")), url)

    def test_addresses(self):
        """Loopback, private, link-local, shared and multicast are refused."""
        url = parse_url("http://example.org")
        resolved = ["127.0.0.1", "10.1.2.3", "192.168.1.1", "169.254.1.1", "100.64.0.1", "224.0.0.1",
                    "0.0.0.0", "::1", "::ffff:127.0.0.1", "fe80::1", "fc00::1", "ff02::1",
                    "93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"]
        self.assertEqual(fetchable_addresses(url, resolved, frozenset()),
                         ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"])
        self.assertEqual(fetchable_addresses(url, ["10.1.2.3"], {("http", "10.1.2.3", 80)}), ["10.1.2.3"])
        self.assertEqual(fetchable_addresses(url, ["10.1.2.3"], {("http", "10.1.2.3", 8080)}), [])


class Slow(Resource):
    """Counts requests to /big (100 KB) and leaves /slow unanswered."""

    isLeaf = True

    def __init__(self):
        Resource.__init__(self)
        self.requests = []
        self.hanging = []

    def render_GET(self, request):
        self.requests.append(request.path)
        if request.path == b"/redirect":
            request.redirect(b"http://127.0.0.1:1/elsewhere")
            return b""
        if request.path == b"/slow":
            self.hanging.append(request)
            return NOT_DONE_YET
        return b"x" * 100_000


class FetchTests(TestCase):
    """The proxy against a real loopback server."""

    async def proxy(self, also_allow=(), only_allow=None, **settings):
        self.resource = Slow()
        site = Site(self.resource)
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site)
        self.addCleanup(port.stopListening)
        self.port = port.getHost().port
        self.base = f"http://127.0.0.1:{self.port}"
        self.sender = RecordingSender()
        entries = (self.base,) + also_allow if only_allow is None else only_allow
        allowed = parse_allow_list(",".join(e.format(port=self.port) for e in entries))
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

    async def test_kelvin_sign(self):
        """
        A host that is not in IDNA's canonical form (here a Kelvin sign,
        which Unicode lower-cases to "k" and ASCII-ignoring drops) is
        refused, not compared in one form and fetched in another.
        """
        backend = await self.proxy(also_allow=("http://k127.0.0.1:{port}",))
        answer = await self.ask(backend, f"http://\u212a127.0.0.1:{self.port}/big")
        self.assertIsInstance(answer, ProxyError)
        self.assertEqual(answer.reason, "bad_request")
        answer = await self.ask(backend, f"http://127.0.0.1:{self.port}/caf\u00e9\u212a")
        self.assertEqual(answer.status, 200)
        self.assertEqual(self.resource.requests, [b"/caf%C3%A9%E2%84%AA"])

    async def test_name_resolving_to_loopback(self):
        """
        An allowed host name that resolves to a loopback address is
        refused with no request made, unless the list names that address
        too.
        """
        backend = await self.proxy(only_allow=("http://localhost:{port}",))
        answer = await self.ask(backend, f"http://localhost:{self.port}/big")
        self.assertIsInstance(answer, ProxyError)
        self.assertEqual(answer.reason, "forbidden_address")
        self.assertEqual(self.resource.requests, [])
        backend = await self.proxy(also_allow=("http://localhost:{port}",))
        answer = await self.ask(backend, f"http://localhost:{self.port}/big")
        self.assertEqual(answer.status, 200)

    async def test_redirect_not_followed(self):
        """A redirect is handed back as it is; its target is not fetched."""
        backend = await self.proxy()
        answer = await self.ask(backend, self.base + "/redirect")
        self.assertEqual(answer.status, 302)
        self.assertEqual(answer.header(b"Location"), [b"http://127.0.0.1:1/elsewhere"])
        self.assertEqual(self.resource.requests, [b"/redirect"])

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
