"""
The web-proxy backend: performs an HTTP request carried in a service
message and sends the response back through the request's SURBs.

Only URLs whose scheme, host and port are on the operator's allow-list are
fetched; the list is empty by default, so nothing is proxied until the
operator says so.  The codecs of the request and the reply are here too, so
that the client side (:mod:`nymprov.client.services`) shares them.
"""

import struct
from io import BytesIO

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.internet.error import ConnectError, DNSLookupError
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from zope.interface import implementer

from nymprov.backends.surbreply import ReplyingBackend, ServiceBusy
from nymprov.backends.urlpolicy import (  # noqa: F401 (parse_* re-exported for plugins)
    DEFAULT_PORTS,
    fetchable_addresses,
    parse_allow_list,
    parse_origin,
    parse_url,
)
from nymprov.interfaces import IProvider
from nymprov.net.pinned import PinnedEndpoints, resolve

#: Headers about the connection, not the message: the proxy makes its own.
HOP_BY_HOP = frozenset(
    b"connection keep-alive proxy-authenticate proxy-authorization te trailer"
    b" transfer-encoding upgrade host content-length".split()
)

KIND_RESPONSE = 0
KIND_ERROR = 1


class ForbiddenAddress(Exception):
    """A host that resolved only to addresses the proxy must not reach."""


class CodecError(ValueError):
    """Bytes that are not a web-proxy request or reply."""


class _Reader:
    """Reads length-prefixed fields, raising CodecError past the end."""

    def __init__(self, data):
        self._data = memoryview(data)
        self._at = 0

    def take(self, n):
        if self._at + n > len(self._data):
            raise CodecError("truncated")
        chunk = bytes(self._data[self._at : self._at + n])
        self._at += n
        return chunk

    def u8(self):
        return self.take(1)[0]

    def u16(self):
        return struct.unpack(">H", self.take(2))[0]

    def blob8(self):
        return self.take(self.u8())

    def blob16(self):
        return self.take(self.u16())

    def rest(self):
        return self.take(len(self._data) - self._at)


def _blob8(data):
    if len(data) > 0xFF:
        raise ValueError("field longer than 255 bytes")
    return bytes([len(data)]) + data


def _blob16(data):
    if len(data) > 0xFFFF:
        raise ValueError("field longer than 65535 bytes")
    return struct.pack(">H", len(data)) + data


def _encode_headers(headers):
    headers = list(headers)
    return struct.pack(">H", len(headers)) + b"".join(_blob16(n) + _blob16(v) for n, v in headers)


def _decode_headers(reader):
    return [(reader.blob16(), reader.blob16()) for _ in range(reader.u16())]


def encode_http_request(method, url, headers=(), body=b""):
    """
    :param bytes method: e.g. ``b"GET"``.
    :param str url: the absolute URL.
    :param headers: ``(name, value)`` byte pairs.
    :returns: the request body of a service message.
    """
    return _blob8(method) + _blob16(url.encode("utf-8")) + _encode_headers(headers) + body


def decode_http_request(data):
    """
    :returns: ``(method, url, headers, body)``.
    :raises CodecError: if ``data`` is not a request.
    """
    reader = _Reader(data)
    method = reader.blob8()
    try:
        url = reader.blob16().decode("utf-8")
    except UnicodeDecodeError:
        raise CodecError("URL is not UTF-8")
    headers = _decode_headers(reader)
    if not method.isalpha() or not method.isascii():
        raise CodecError("bad method")
    return method, url, headers, reader.rest()


class HttpResponse:
    """A proxied response: ``status``, ``phrase``, ``headers``, ``body``, ``truncated``."""

    def __init__(self, status, phrase, headers, body, truncated=False):
        self.status = status
        self.phrase = phrase
        self.headers = list(headers)
        self.body = body
        self.truncated = truncated

    def header(self, name):
        """:returns: the values of header ``name`` (bytes, any case)."""
        name = name.lower()
        return [v for n, v in self.headers if n.lower() == name]


class ProxyError(Exception):
    """
    The proxy refused or failed the request; ``reason`` is one of
    ``not_allowed``, ``bad_request``, ``timeout``, ``connect_failed``,
    ``failed``, ``reply_too_large``; ``detail`` says more.
    """

    def __init__(self, reason, detail=""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def encode_response_head(response):
    """The reply bytes of ``response`` without its body."""
    return (
        bytes([KIND_RESPONSE])
        + struct.pack(">HB", response.status, int(response.truncated))
        + _blob8(response.phrase[:255])
        + _encode_headers(response.headers)
    )


def encode_response(response):
    """:returns: the reply body carrying ``response``."""
    return encode_response_head(response) + response.body


def encode_error(reason, detail=""):
    """:returns: the reply body carrying a :class:`ProxyError`."""
    return bytes([KIND_ERROR]) + _blob8(reason.encode("ascii")) + _blob16(detail.encode("utf-8")[:1000])


def decode_reply(data):
    """
    :returns: an :class:`HttpResponse`, or a :class:`ProxyError` (returned,
        not raised: it is the proxy's answer).
    :raises CodecError: if ``data`` is neither.
    """
    reader = _Reader(data)
    kind = reader.u8()
    if kind == KIND_ERROR:
        try:
            return ProxyError(reader.blob8().decode("ascii"), reader.blob16().decode("utf-8"))
        except UnicodeDecodeError:
            raise CodecError("error reason is not text")
    if kind != KIND_RESPONSE:
        raise CodecError(f"unknown reply kind {kind}")
    status = reader.u16()
    truncated = reader.u8()
    phrase = reader.blob8()
    headers = _decode_headers(reader)
    return HttpResponse(status, phrase, headers, reader.rest(), bool(truncated))


# -- the backend -----------------------------------------------------------------


class _LimitedBody(Protocol):
    """Collects a response body up to ``limit`` bytes, then stops reading."""

    def __init__(self, limit, finished):
        self._limit = limit
        self._finished = finished
        self._parts = []
        self._size = 0
        self.truncated = False

    def dataReceived(self, data):
        if self.truncated:
            return
        room = self._limit - self._size
        if len(data) > room:
            data = data[:room]
            self.truncated = True
        self._parts.append(data)
        self._size += len(data)
        if self.truncated:
            self.transport.stopProducing()

    def connectionLost(self, reason):
        if self.truncated or reason.check(ResponseDone, PotentialDataLoss):
            self._finished.callback(b"".join(self._parts))
        else:
            self._finished.errback(reason)


@implementer(IProvider)
class WebProxyProvider(ReplyingBackend, Service):
    """
    Fetches allowed URLs and answers through SURBs.

    ``deliver`` fires once the request is accepted (the fetch then runs on
    its own); a full proxy refuses with ``ServiceBusy``.  A refused or
    failed request is answered with an error reply, never a silence.

    :param allowed: frozenset of ``(scheme, host, port)``.
    :param float timeout: seconds for the whole fetch.
    :param int max_body: response body bytes kept at most.
    :param int max_concurrent: fetches at once.
    """

    log = Logger()
    name = "webproxy"

    def __init__(self, sender, topology, reactor, *, allowed=frozenset(), timeout=30.0,
                 max_body=1024 * 1024, max_concurrent=16, agent=None):
        ReplyingBackend.__init__(self, sender, topology, reactor)
        self._reactor = reactor
        self._allowed = allowed
        self._timeout = timeout
        self._max_body = max_body
        self._max_concurrent = max_concurrent
        self._pool = HTTPConnectionPool(reactor, persistent=False)
        # An Agent given (tests) is used as it is; by default each fetch
        # gets one pinned to the address its host was checked at.
        self._agent = agent
        self._in_flight = set()

    def reload(self, options):
        """
        Take the allow-list, time-out and limits of ``options`` (a parsed
        ``WebProxyOptions``) from now on; fetches under way keep theirs.

        :returns: what could not be changed (nothing).
        """
        self._allowed = options["allowed"]
        self._timeout = options["timeout"]
        self._max_body = options["max-body"]
        self._max_concurrent = options["max-concurrent"]
        return []

    def handle(self, request):
        """Check the request against the allow-list and start the fetch."""
        if len(self._in_flight) >= self._max_concurrent:
            raise ServiceBusy("too many fetches at once")
        try:
            method, text, headers, body = decode_http_request(request.body)
            url = parse_url(text)
        except ValueError as e:  # CodecError included
            return self._answer_error(request, "bad_request", str(e))
        if url.origin not in self._allowed:
            return self._answer_error(request, "not_allowed", f"{url.scheme}://{url.host}:{url.port}")
        d = self._fetch(method, url, headers, body, min(self._max_body, request.reply_capacity))
        self._in_flight.add(d)
        d.addBoth(self._fetched, request, d)
        return None

    def _fetch(self, method, url, headers, body, limit):
        kept = Headers()
        for name, value in headers:
            if name.lower() not in HOP_BY_HOP:
                kept.addRawHeader(name, value)
        producer = FileBodyProducer(BytesIO(body)) if body else None
        allowed = self._allowed
        if self._agent is not None:
            d = self._agent.request(method, url.url(), kept, producer)
        else:
            # Resolved here, checked, and connected to exactly the address
            # checked: the Agent never resolves the name a second time.
            d = resolve(self._reactor, url.host, url.port)

            def resolved(addresses):
                if not addresses:
                    raise DNSLookupError(f"{url.host} did not resolve")
                fetchable = fetchable_addresses(url, addresses, allowed)
                if not fetchable:
                    raise ForbiddenAddress(", ".join(sorted(set(addresses))))
                endpoints = PinnedEndpoints(self._reactor, fetchable[0], self._timeout)
                agent = Agent.usingEndpointFactory(self._reactor, endpoints, pool=self._pool)
                return agent.request(method, url.url(), kept, producer)

            d.addCallback(resolved)
        d.addCallback(self._read, limit)
        # Cancelling the Agent's request fails it with ResponseNeverReceived
        # or ResponseFailed, not CancelledError: whatever the outcome of a
        # cancel by the timeout, it is a timeout.
        d.addTimeout(self._timeout, self._reactor, onTimeoutCancel=_timed_out)
        return d

    def _read(self, response, limit):
        def stop_reading(_):
            # Cancelled (the timeout): hang up instead of reading on.
            if reader.transport is not None:
                reader.transport.stopProducing()

        finished = Deferred(stop_reading)
        reader = _LimitedBody(limit, finished)
        response.deliverBody(reader)

        def done(body):
            return HttpResponse(
                response.code, response.phrase, list(_raw_headers(response.headers)), body, reader.truncated
            )

        return finished.addCallback(done)

    def _fetched(self, outcome, request, d):
        self._in_flight.discard(d)
        if isinstance(outcome, HttpResponse):
            head = encode_response_head(outcome)
            room = request.reply_capacity - len(head)
            if room < 0:
                return self._answer_error(request, "reply_too_large", "headers do not fit the SURBs")
            if len(outcome.body) > room:
                outcome.body, outcome.truncated = outcome.body[:room], True
                head = encode_response_head(outcome)
            self.reply(request, head + outcome.body)
            return None
        if outcome.check(ForbiddenAddress):
            return self._answer_error(request, "forbidden_address", outcome.getErrorMessage())
        if outcome.check(TimeoutError, CancelledError):
            return self._answer_error(request, "timeout", f"no answer within {self._timeout:g} s")
        if outcome.check(ConnectError, DNSLookupError):
            return self._answer_error(request, "connect_failed", outcome.getErrorMessage())
        self.log.info("webproxy: fetch failed: {why}", why=outcome.getErrorMessage())
        return self._answer_error(request, "failed", outcome.type.__name__)

    def _answer_error(self, request, reason, detail):
        body = encode_error(reason, detail)
        if len(body) <= request.reply_capacity:
            self.reply(request, body)
        return None

    def stopService(self):
        """Cancel fetches still running and close idle connections."""
        Service.stopService(self)
        for d in list(self._in_flight):
            d.cancel()
        return self._pool.closeCachedConnections()


def _timed_out(result, timeout):
    return Failure(TimeoutError(f"no answer within {timeout:g} s"))


def _raw_headers(headers):
    for name, values in headers.getAllRawHeaders():
        for value in values:
            yield name, value
