"""
A SOCKS5 server (RFC 1928: no authentication, CONNECT only) whose
connections become mixnet streams (:class:`MixStreams`).

Written by hand: Twisted ships only a SOCKS4 server, and the parse is a
few dozen lines.  Bad input gets the RFC's reply code and a closed
connection, counted by reason; the handshake's buffer is bounded.
"""

import ipaddress
import struct

from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from zope.interface import implementer

from nymprov.net.mixstream import DeliveryProducer
from nymprov.wire.streams import (
    DATA,
    FIN,
    OPEN,
    OPENED,
    REPLY_ADDRESS_TYPE_NOT_SUPPORTED,
    REPLY_COMMAND_NOT_SUPPORTED,
    REPLY_GENERAL_FAILURE,
    REPLY_SUCCEEDED,
    encode_open,
)

SOCKS_VERSION = 5
NO_AUTHENTICATION = 0
NO_ACCEPTABLE_METHOD = 0xFF
CONNECT = 1
ATYP_IPV4, ATYP_DOMAIN, ATYP_IPV6 = 1, 3, 4
#: Most bytes a greeting and a request take together (255 methods, 255-byte name).
MAX_HANDSHAKE = 2 + 255 + 4 + 1 + 255 + 2


def socks_reply(code):
    """A reply with no bound address (zeros): clients of CONNECT ignore it."""
    return struct.pack(">BBBB4sH", SOCKS_VERSION, code, 0, ATYP_IPV4, bytes(4), 0)


class _Incomplete(Exception):
    """More bytes are needed."""


class _Refused(Exception):
    def __init__(self, reason, code):
        super().__init__(reason)
        self.reason = reason
        self.code = code


def parse_greeting(data):
    """:returns: ``(methods, bytes used)``; raises :class:`_Incomplete` or :class:`_Refused`."""
    if len(data) < 2:
        raise _Incomplete()
    if data[0] != SOCKS_VERSION:
        raise _Refused("bad_version", None)
    end = 2 + data[1]
    if len(data) < end:
        raise _Incomplete()
    return bytes(data[2:end]), end


def parse_request(data):
    """:returns: ``(host, port, bytes used)``; raises :class:`_Incomplete` or :class:`_Refused`."""
    if len(data) < 5:
        raise _Incomplete()
    version, command, reserved, atyp = data[0], data[1], data[2], data[3]
    if version != SOCKS_VERSION or reserved != 0:
        raise _Refused("bad_request", REPLY_GENERAL_FAILURE)
    if command != CONNECT:
        raise _Refused("bad_command", REPLY_COMMAND_NOT_SUPPORTED)
    if atyp == ATYP_IPV4:
        start, end = 4, 8
    elif atyp == ATYP_IPV6:
        start, end = 4, 20
    elif atyp == ATYP_DOMAIN:
        start, end = 5, 5 + data[4]
    else:
        raise _Refused("bad_address_type", REPLY_ADDRESS_TYPE_NOT_SUPPORTED)
    if len(data) < end + 2:
        raise _Incomplete()
    raw = bytes(data[start:end])
    (port,) = struct.unpack_from(">H", data, end)
    if atyp == ATYP_DOMAIN:
        try:
            host = raw.decode("ascii")
        except UnicodeDecodeError:
            raise _Refused("bad_name", REPLY_GENERAL_FAILURE)
        if not host or not all(c.isalnum() or c in "-._" for c in host):
            raise _Refused("bad_name", REPLY_GENERAL_FAILURE)
    else:
        host = str(ipaddress.ip_address(raw))
    if port == 0:
        raise _Refused("bad_port", REPLY_GENERAL_FAILURE)
    return host, port, end + 2


@implementer(IHalfCloseableProtocol)
class Socks5Protocol(Protocol):
    """
    One local connection: the handshake, then one mixnet stream.  Each
    direction closes by itself (TCP's half-close): the program's end of
    writing is the stream's FIN, the site's FIN shuts the program's
    reading side only.
    """

    def __init__(self, factory):
        self.factory = factory
        self._buffer = b""
        self._state = "greeting"
        self._endpoint = None
        self._paused = False
        self._timeout = None

    def connectionMade(self):
        self._timeout = self.factory.clock.callLater(self.factory.handshake_timeout, self._handshake_expired)

    def _handshake_expired(self):
        self._timeout = None
        self._refuse("handshake_timeout", None)

    def _refuse(self, reason, code):
        self.factory.streams.counters.incr("socks5.local_refused", reason)
        if code is not None:
            self.transport.write(socks_reply(code))
        self._state = "closed"
        self.transport.loseConnection()

    def dataReceived(self, data):
        if self._state in ("opening", "relaying"):
            # While opening too: the stream carries it after the OPEN.
            self._to_stream(data)
            return
        if self._state not in ("greeting", "request"):
            return
        self._buffer += data
        try:
            if self._state == "greeting":
                methods, used = parse_greeting(self._buffer)
                self._buffer = self._buffer[used:]
                if NO_AUTHENTICATION not in methods:
                    self.transport.write(bytes([SOCKS_VERSION, NO_ACCEPTABLE_METHOD]))
                    return self._refuse("no_method", None)
                self.transport.write(bytes([SOCKS_VERSION, NO_AUTHENTICATION]))
                self._state = "request"
            host, port, used = parse_request(self._buffer)
        except _Incomplete:
            # The format bounds what waits here (MAX_HANDSHAKE bytes at
            # most before it parses or is refused); bytes after a complete
            # request are the stream's, however many (an optimistic client's).
            return
        except _Refused as e:
            return self._refuse(e.reason, e.code)
        early, self._buffer = self._buffer[used:], b""
        try:
            payload = encode_open(host, port)
        except ValueError:
            return self._refuse("bad_name", REPLY_GENERAL_FAILURE)
        self._state = "opening"
        _, self._endpoint = self.factory.streams.open(self._frame, self._closed, self._check_flow)
        self._endpoint.send(OPEN, payload)
        if early:
            # Sent before the reply came (optimistic clients): it follows the OPEN.
            self._to_stream(early)

    def _to_stream(self, data):
        chunk = self.factory.streams.up_chunk
        for at in range(0, len(data), chunk):
            self._endpoint.send(DATA, data[at : at + chunk])
        self._check_flow()

    def _check_flow(self):
        if self._endpoint is None or self._state not in ("opening", "relaying"):
            return
        full = self._endpoint.in_flight >= self.factory.streams.window
        if full != self._paused:
            self._paused = full
            (self.transport.pauseProducing if full else self.transport.resumeProducing)()

    def _frame(self, kind, payload):
        if kind == OPENED and self._state == "opening":
            self._cancel_timeout()
            self._state = "relaying"
            # A program that does not read pauses its stream, not the client's memory.
            self.transport.registerProducer(DeliveryProducer(self._endpoint), True)
            self.transport.write(socks_reply(REPLY_SUCCEEDED))
        elif kind == DATA and self._state == "relaying":
            self.transport.write(payload)
        elif kind == FIN and self._state == "relaying":
            self.transport.loseWriteConnection()
        self._check_flow()

    def _closed(self, code):
        self._cancel_timeout()
        if self._state == "opening":
            self._refuse(f"remote_{code}", code or REPLY_GENERAL_FAILURE)
        elif self._state == "relaying":
            self._state = "closed"
            if code is None:
                self.transport.loseConnection()
            else:
                self.transport.abortConnection()

    def _cancel_timeout(self):
        if self._timeout is not None and self._timeout.active():
            self._timeout.cancel()
        self._timeout = None

    def readConnectionLost(self):
        endpoint = self._endpoint
        if self._state in ("opening", "relaying") and not endpoint.closed:
            endpoint.send(FIN)
        else:
            self.transport.loseConnection()

    def writeConnectionLost(self):
        pass

    def connectionLost(self, reason):
        self._cancel_timeout()
        self._state = "closed"
        endpoint = self._endpoint
        if endpoint is not None and not endpoint.closed:
            # The local program is gone: say so now, and reset the stream
            # if the provider has not closed it by itself within the linger.
            endpoint.send(FIN)
            endpoint.linger(self.factory.linger)


class Socks5Factory(Factory):
    """
    :param streams: a :class:`nymprov.client.socks5.streams.MixStreams`.
    :param clock: an ``IReactorTime``.
    """

    def __init__(self, streams, clock, handshake_timeout=30.0, linger=10.0):
        self.streams = streams
        self.clock = clock
        self.handshake_timeout = handshake_timeout
        self.linger = linger

    def buildProtocol(self, addr):
        return Socks5Protocol(self)
