"""Tests for nymprov.backends.forward: the durable, retrying forwarding queue."""

import os
import stat

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site

from nymprov.backends.forward import ForwardProvider, backoff, decode_status, encode_status
from nymprov.backends.surbreply import (
    MalformedServiceRequest,
    ServiceBusy,
    SurbRefused,
    decode_fragment,
    encode_fragment,
    encode_service_request,
)
from nymprov.sphinx import SURB
from nymprov.wire.envelope import decode_envelope

from .test_backend_surbreply import HOME, ROUTE, TOPOLOGY, RecordingSender, final, make_surb, walk


def payload_message(payload, surbs=()):
    """A one-fragment forward request."""
    return encode_fragment(os.urandom(16), 0, 1, encode_service_request(list(surbs), payload))


async def sleep(seconds):
    """Wait ``seconds`` on the real reactor."""
    d = Deferred()
    reactor.callLater(seconds, d.callback, None)
    await d


class Flaky(Resource):
    """Answers 503 to the first ``failures`` posts, then 200; records bodies."""

    isLeaf = True

    def __init__(self, failures):
        Resource.__init__(self)
        self.failures = failures
        self.bodies = []

    def render_POST(self, request):
        self.bodies.append(request.content.read())
        if len(self.bodies) <= self.failures:
            request.setResponseCode(503)
        return b""


class PureTests(SynchronousTestCase):
    """Back-off and the status codec."""

    def test_backoff(self):
        """Waits double from the first and stop at the cap."""
        self.assertEqual([backoff(n, 0.5, 3.0) for n in range(1, 6)], [0.5, 1.0, 2.0, 3.0, 3.0])
        self.assertEqual(backoff(10_000, 1.0, 300.0), 300.0)

    def test_status(self):
        """A status reply round-trips; a short one is refused."""
        self.assertEqual(decode_status(encode_status(201, b"Created")), (201, b"Created"))
        self.assertRaises(ValueError, decode_status, b"\x01")


class QueueTests(TestCase):
    """The queue against a real loopback server."""

    async def start(self, resource=None, path=None, **settings):
        url = "http://127.0.0.1:1/"
        if resource is not None:
            port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Site(resource))
            self.addCleanup(port.stopListening)
            url = f"http://127.0.0.1:{port.getHost().port}/rpc"
        self.path = path or self.mktemp() + ".sqlite"
        self.sender = RecordingSender()
        backend = ForwardProvider(self.sender, TOPOLOGY, reactor, url=url, path=self.path,
                                  retry_first=0.05, retry_max=0.2, **settings)
        await backend.startService()
        self.addCleanup(lambda: backend.running and backend.stopService())
        return backend

    async def test_retries_until_2xx_and_sends_status(self):
        """A payload refused twice is posted again until 200, then its status goes back."""
        sink = Flaky(failures=2)
        backend = await self.start(sink)
        await backend.deliver(final(payload_message(b"tx", [make_surb()])))
        while backend.queued_count:
            await sleep(0.02)
        self.assertEqual(sink.bodies, [b"tx"] * 3)
        [(first_hop, packet)] = self.sender.sent
        self.assertEqual(first_hop, ROUTE[0].address)
        data = decode_fragment(decode_envelope(walk(packet)).body).chunk
        self.assertEqual(decode_status(data), (200, b"OK"))
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)

    async def test_bad_input_changes_nothing(self):
        """Malformed, multi-fragment and bad-SURB messages are refused and nothing is queued."""
        backend = await self.start()
        bad = [
            b"\x01garbage",
            encode_fragment(b"m" * 16, 0, 2, encode_service_request([], b"half")),
            payload_message(b"x", [SURB.create(ROUTE[1:], [0], HOME)]),
        ]
        for message, error in zip(bad, (MalformedServiceRequest, MalformedServiceRequest, SurbRefused)):
            with self.assertRaises(error):
                await backend.deliver(final(message))
        self.assertEqual(backend.queued_count, 0)

    async def test_queue_full(self):
        """Beyond max-queue, a payload is refused as busy."""
        backend = await self.start(max_queue=1)
        await backend.deliver(final(payload_message(b"one")))
        with self.assertRaises(ServiceBusy):
            await backend.deliver(final(payload_message(b"two")))

    async def test_survives_restart(self):
        """Payloads queued while the target is down are posted after a restart."""
        backend = await self.start()
        for i in range(3):
            await backend.deliver(final(payload_message(b"p%d" % i)))
        await backend.stopService()
        sink = Flaky(failures=0)
        again = await self.start(sink, path=self.path)
        self.assertEqual(again.queued_count, 3)
        while again.queued_count:
            await sleep(0.02)
        self.assertEqual(sorted(sink.bodies), [b"p0", b"p1", b"p2"])
