"""
The ``socks5`` backend, a network requester: each client session (a random
id the client picks; the provider never learns who it is) opens streams;
for each the provider checks the exit policy, resolves the name itself,
connects, and relays bytes both ways.  Frames to the client travel in the
session's SURBs, which the client tops up as the ``surbs`` count in each
frame falls.
"""

import os

from twisted.application.service import Service
from twisted.internet import error as net_error
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

from nymprov.backends.surbreply import (
    REPLY_CHUNK_SIZE,
    MalformedServiceRequest,
    ReplyingBackend,
    ServiceBusy,
    encode_fragment,
)
from nymprov.interfaces import IProvider
from nymprov.metrics import Counters
from nymprov.net.mixstream import DeliveryProducer, StreamEndpoint
from nymprov.net.pinned import resolve
from nymprov.sphinx import PacketSize
from nymprov.wire.envelope import encode_envelope
from nymprov.wire.streams import (
    DATA,
    FIN,
    OPEN,
    OPENED,
    RESET,
    REPLY_CONNECTION_REFUSED,
    REPLY_GENERAL_FAILURE,
    REPLY_HOST_UNREACHABLE,
    REPLY_NOT_ALLOWED,
    STREAM_HEADER_LENGTH,
    MalformedStreamFrame,
    StreamFrame,
    decode_open,
    encode_reset,
)

#: Stream bytes in one frame back to the client: one fragment of one SURB reply.
DOWN_CHUNK = REPLY_CHUNK_SIZE - STREAM_HEADER_LENGTH
#: Frames to the client kept while the session has no SURB left.
BACKLOG = 256


class _Session:
    def __init__(self, session_id, now):
        self.id = session_id
        self.surbs = []
        self.streams = {}  # stream id -> _Relay
        self.backlog = []  # frame bytes waiting for a SURB
        self.last_seen = now


@implementer(IHalfCloseableProtocol)
class _Outbound(Protocol):
    """The provider's TCP connection for one stream."""

    def __init__(self, relay):
        self.relay = relay

    def connectionMade(self):
        self.relay.connected(self)

    def dataReceived(self, data):
        self.relay.from_tcp(data)

    def readConnectionLost(self):
        self.relay.tcp_ended()

    def writeConnectionLost(self):
        pass

    def connectionLost(self, reason):
        self.relay.tcp_ended(lost=True)


class _OutboundFactory(ClientFactory):
    def __init__(self, relay):
        self.relay = relay

    def buildProtocol(self, addr):
        return _Outbound(self.relay)

    def clientConnectionFailed(self, connector, reason):
        self.relay.connect_failed(reason)


class _Relay:
    """One stream: its mixnet end and, once connected, its TCP connection."""

    def __init__(self, provider, session, stream_id):
        self.provider = provider
        self.session = session
        self.stream_id = stream_id
        self.tcp = None
        self.connector = None
        self.paused = False
        # What the client sent before the TCP connect completed: written
        # once it does, in order; bounded by the flow-control window.
        self.early = []
        self.early_bytes = 0
        self.early_fin = False
        self.endpoint = StreamEndpoint(
            provider.clock, self._transmit, self._frame, self._closed,
            rto=provider.rto, window=provider.window, idle_timeout=provider.idle_timeout)

    def _transmit(self, kind, seq, ack, window, payload):
        self.provider.send_frame(self.session, self.stream_id, kind, seq, ack, window, payload)

    def _frame(self, kind, payload):
        if kind == OPEN:
            try:
                host, port = decode_open(payload)
            except MalformedStreamFrame:
                return self.refuse("malformed_open", REPLY_GENERAL_FAILURE)
            self.provider.open(self, host, port)
        elif kind == DATA and self.tcp is not None:
            self.tcp.transport.write(payload)
        elif kind == DATA:
            self.early_bytes += len(payload)
            if self.early_bytes > self.provider.window * REPLY_CHUNK_SIZE:
                return self.refuse("early_data_over_window", REPLY_GENERAL_FAILURE)
            self.early.append(payload)
        elif kind == FIN and self.tcp is not None:
            self.tcp.transport.loseWriteConnection()
        elif kind == FIN:
            self.early_fin = True

    def refuse(self, reason, code):
        self.provider.counters.incr("socks5.refused", reason)
        self.endpoint.reset(code)

    def connected(self, protocol):
        self.tcp = protocol
        if self.endpoint.closed:
            protocol.transport.abortConnection()
            return
        self.provider.counters.incr("socks5.streams_opened")
        # A site that does not read pauses the stream, not this process's memory.
        protocol.transport.registerProducer(DeliveryProducer(self.endpoint), True)
        self.endpoint.send(OPENED)
        early, self.early = b"".join(self.early), []
        if early:
            protocol.transport.write(early)
        if self.early_fin:
            protocol.transport.loseWriteConnection()

    def connect_failed(self, reason):
        self.connector = None
        if reason.check(net_error.ConnectionRefusedError):
            self.refuse("connection_refused", REPLY_CONNECTION_REFUSED)
        else:
            self.refuse("connect_failed", REPLY_HOST_UNREACHABLE)

    def from_tcp(self, data):
        for at in range(0, len(data), DOWN_CHUNK):
            self.endpoint.send(DATA, data[at : at + DOWN_CHUNK])
        self.check_flow()

    def check_flow(self):
        """Stop reading the server while too much waits for the client's ACKs."""
        if self.tcp is None or self.endpoint.closed:
            return
        full = self.endpoint.in_flight >= self.provider.window
        if full and not self.paused:
            self.paused = True
            self.tcp.transport.pauseProducing()
        elif not full and self.paused:
            self.paused = False
            self.tcp.transport.resumeProducing()

    def tcp_ended(self, lost=False):
        if not self.endpoint.closed:
            self.endpoint.send(FIN)
        if lost:
            self.tcp = None

    def _closed(self, code):
        self.provider.counters.incr("socks5.streams_closed", "done" if code is None else f"reset_{code}")
        self.session.streams.pop(self.stream_id, None)
        # A connector whose connection came and went is not connecting any more.
        if self.connector is not None and self.connector.state == "connecting":
            self.connector.stopConnecting()
        if self.tcp is not None:
            self.tcp.transport.abortConnection()
            self.tcp = None


@implementer(IProvider)
class Socks5Provider(ReplyingBackend, Service):
    """
    :param policy: a :class:`nymprov.backends.socks5.policy.ExitPolicy`.
    :param int max_sessions: client sessions at once.
    :param int max_streams: streams of one session at once.
    :param int max_surbs: SURBs one session may leave here.
    :param int window: frames in flight per stream, each way.
    :param float idle_timeout: seconds a silent stream lives; a silent
        session without streams is forgotten after it too.
    """

    log = Logger()
    name = "socks5"

    def __init__(self, sender, topology, reactor, *, policy, max_sessions=256, max_streams=64,
                 max_surbs=1024, window=64, idle_timeout=120.0, rto=3.0, connect_timeout=20.0,
                 counters=None):
        ReplyingBackend.__init__(self, sender, topology, reactor)
        self.reactor = reactor
        self.policy = policy
        self.max_sessions = max_sessions
        self.max_streams = max_streams
        self.max_surbs = max_surbs
        self.window = window
        self.idle_timeout = idle_timeout
        self.rto = rto
        self.connect_timeout = connect_timeout
        # The node's counters, so that refusals and stream fates are in its
        # stats line and /metrics.
        self.counters = counters if counters is not None else Counters()
        self.sessions = {}

    # -- frames from clients -------------------------------------------------

    def handle(self, request):
        """Take one stream frame and the SURBs that came with it."""
        try:
            frame = StreamFrame.from_bytes(request.body)
        except MalformedStreamFrame as e:
            self.counters.incr("socks5.refused", "malformed_frame")
            raise MalformedServiceRequest(str(e))
        now = self.clock.seconds()
        self._forget_idle(now)
        session = self.sessions.get(frame.session)
        if session is None:
            if len(self.sessions) >= self.max_sessions:
                self.counters.incr("socks5.refused", "too_many_sessions")
                raise ServiceBusy("too many sessions")
            session = self.sessions[frame.session] = _Session(frame.session, now)
        session.last_seen = now
        room = self.max_surbs - len(session.surbs)
        if len(request.surbs) > room:
            self.counters.incr("socks5.refused", "surbs_over_limit", len(request.surbs) - room)
        session.surbs.extend(request.surbs[: max(room, 0)])
        self._flush(session)
        relay = session.streams.get(frame.stream)
        if relay is None and frame.kind == OPEN and frame.seq == 0:
            if len(session.streams) >= self.max_streams:
                self.counters.incr("socks5.refused", "too_many_streams")
                self.send_frame(session, frame.stream, RESET, 0, 1, 0, encode_reset(REPLY_GENERAL_FAILURE))
                return None
            relay = session.streams[frame.stream] = _Relay(self, session, frame.stream)
        if relay is not None:
            relay.endpoint.receive(frame)
            relay.check_flow()
        elif frame.kind not in (RESET,) and frame.stream:
            # A stream closed here (or never opened): say so, once per frame.
            self.counters.incr("socks5.refused", "unknown_stream")
            self.send_frame(session, frame.stream, RESET, 0, 0, 0, encode_reset(REPLY_GENERAL_FAILURE))
        return None

    def _forget_idle(self, now):
        for session_id, session in list(self.sessions.items()):
            if not session.streams and now - session.last_seen > self.idle_timeout:
                del self.sessions[session_id]

    def open(self, relay, host, port):
        """Check ``host:port`` against the policy, resolve it here, connect."""
        if not self.policy.allows_name(host, port):
            return relay.refuse("policy", REPLY_NOT_ALLOWED)
        d = resolve(self.reactor, host, port)

        def resolved(addresses):
            if relay.endpoint.closed:
                return
            if not addresses:
                return relay.refuse("unresolved", REPLY_HOST_UNREACHABLE)
            allowed = [a for a in addresses if self.policy.allows_address(a, port)]
            if not allowed:
                return relay.refuse("forbidden_address", REPLY_NOT_ALLOWED)
            relay.connector = self.reactor.connectTCP(allowed[0], port, _OutboundFactory(relay),
                                                      timeout=self.connect_timeout)

        def failed(failure):
            if not relay.endpoint.closed:
                relay.refuse("unresolved", REPLY_HOST_UNREACHABLE)

        d.addCallbacks(resolved, failed)

    # -- frames to clients ---------------------------------------------------

    def send_frame(self, session, stream_id, kind, seq, ack, window, payload):
        """Send a frame back through one of the session's SURBs, or keep it until one comes."""
        frame = StreamFrame(kind, session.id, stream_id, seq, ack, window, 0, payload)
        if len(session.backlog) >= BACKLOG:
            self.counters.incr("socks5.dropped", "no_surbs")  # reliable ones are sent again
            return
        session.backlog.append(frame)
        self._flush(session)

    def _flush(self, session):
        while session.backlog and session.surbs:
            frame = session.backlog.pop(0)
            surb = session.surbs.pop(0)
            # Every frame tells how many SURBs are left: the client's cue to top up.
            data = StreamFrame(frame.kind, frame.session, frame.stream, frame.seq, frame.ack, frame.window,
                               min(len(session.surbs), 0xFFFF), frame.payload).to_bytes()
            fragment = encode_fragment(os.urandom(16), 0, 1, data)
            first_hop, packet = surb.use(encode_envelope(fragment), PacketSize.REGULAR.payload_size)
            if not self.sender.send(first_hop, packet):
                self.counters.incr("socks5.dropped", "sender_full")

    def stopService(self):
        """Close every stream's TCP connection."""
        Service.stopService(self)
        for session in self.sessions.values():
            for relay in list(session.streams.values()):
                relay.endpoint.reset(REPLY_GENERAL_FAILURE)
        self.sessions.clear()
