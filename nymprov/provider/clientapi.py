"""The client API over Twisted: the provider's server protocol and its factory."""

import os
from collections import OrderedDict, deque

from zope.interface import implementer
from twisted.internet.defer import maybeDeferred
from twisted.internet.interfaces import IHandshakeListener, ISSLTransport
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger
from twisted.protocols.basic import Int32StringReceiver
from twisted.python.failure import Failure

from nymprov.net.connlimit import ConnectionLimits
from nymprov.net.deadlines import FrameDeadlines
from nymprov.net.flowcontrol import AnswerBudget
from nymprov.net.transport import no_delay
from nymprov.provider.clienthandlers import RequestHandlers
from nymprov.provider.registration import RegistrationPolicy
from nymprov.provider.sessions import Sessions
from nymprov.net.ratelimit import TokenBucketLimiter
from nymprov.wire import clientapi as api
from nymprov.wire.clientapi import ClientApiError, ErrorCode

#: Bytes of answers a connection may owe (being made, or written but not
#: yet taken by the peer) before the provider stops reading its requests;
#: reading resumes as the peer reads.  One answer is always allowed, so
#: the largest PULL answer (64 slots of 2 KiB: 135 KB) still goes through.
ANSWER_BUDGET = 1024 * 1024

#: What any answer but MESSAGES may take at most, in bytes, framed.
_SMALL_ANSWER = 4 + 5 + 2 + api.MAX_ERROR_MESSAGE + 64

#: Connections at most from one IPv4 address or IPv6 /64, beside the cap on
#: all connections: one host cannot take every slot.
MAX_CONNECTIONS_PER_IP = 128

#: Seconds a request frame, or the TLS handshake, may take once begun.
FRAME_TIMEOUT = 30.0

#: Seconds a closing connection may take to drain its last answer before it
#: is aborted: a peer that stops reading must not hold the slot forever.
CLOSE_GRACE = 10.0

# Unacked leases a connection remembers for release at its end.  A client
# that pulls without acking would otherwise grow the set for ever; the
# oldest forgotten here simply lapse after the lease time, as before.
MAX_HELD_LEASES = 256

_CONNECTION_REFUSALS = {"total": "too_many_connections", "per_ip": "too_many_from_peer"}

# Requests that read or change the connection's state (nonce, identity).
# They wait for every earlier request to finish, and later requests wait
# for them, so that a pipelined SEND after AUTH sees the AUTH's outcome.
_BARRIERS = (api.Challenge, api.Register, api.Auth, api.Forget)




class _Pending:
    """One request's place in the response order, and what it may cost."""

    __slots__ = ("response", "close", "estimate")

    def __init__(self, response=None, close=False, estimate=0):
        self.response = response
        self.close = close
        self.estimate = estimate


class HeldLeases:
    """The newest ``limit`` (address, lease id) pairs, oldest dropped first."""

    def __init__(self, limit):
        self._limit = limit
        self._held = OrderedDict()

    def add(self, key):
        self._held[key] = None
        self._held.move_to_end(key)
        while len(self._held) > self._limit:
            self._held.popitem(last=False)

    def discard(self, key):
        self._held.pop(key, None)

    def clear(self):
        self._held.clear()

    def __iter__(self):
        return iter(list(self._held))

    def __len__(self):
        return len(self._held)


@implementer(IHandshakeListener)
class ClientApiProtocol(RequestHandlers, AnswerBudget, Int32StringReceiver, FrameDeadlines):
    """
    One client connection: decodes requests, runs them against the store
    and the node, and answers each in request order.

    Flow control (:class:`AnswerBudget`): each request is owed at the
    largest answer it can get, so a connection stops being read once it
    owes the factory's ``answer_budget``, until its peer reads.
    """

    log = Logger()

    # One SEND of the largest packet fits with room to spare; anything
    # bigger is hostile or broken, and is refused before it is buffered.
    MAX_LENGTH = api.MAX_REQUEST_FRAME

    def __init__(self):
        self._address = None
        self._nonce = None
        self._responses = deque()
        self._waiting = deque()
        self._running = 0
        self._barrier_running = False
        self._starting = False
        self._closing = False
        self._lost = False
        self._network = None
        self._handshaking = False
        self._completed = False
        # (address, lease id) of PULLs answered here and not yet acked:
        # they end with the connection, so that a client that reconnects
        # pulls them again at once instead of after the lease.
        self.leases = HeldLeases(MAX_HELD_LEASES)
        self._refusing = False

    # Connection life.

    def connectionMade(self):
        factory = self.factory
        no_delay(self.transport)
        host = self._peer_host()
        self._network = factory.limits.admit(host)
        if self._network is None:
            reason = factory.limits.refusal(host)
            factory.counters.incr("client_api.refused", _CONNECTION_REFUSALS[reason])
            refused = factory.limits.refused_to_log(factory.clock.seconds())
            if refused:
                self.log.warn("client connections refused ({count} since the last such line):"
                              " {limit} open in all, or {per_ip} from one address",
                              count=refused, limit=factory.limits.max_total,
                              per_ip=factory.limits.max_per_network)
            self._refuse_connection()
            return
        factory.counters.incr("client_api.connection")
        self.budget = factory.answer_budget
        self.start_flow_control()
        if ISSLTransport.providedBy(self.transport):
            # The TLS handshake must be over within the frame timeout.
            self._handshaking = True
            self.frame_begins()
        else:
            self.frame_complete()

    def _refuse_connection(self):
        # BUSY, then close; while refusals are pending (each may wait for a
        # TLS handshake and its reader) past the listener's per-address cap,
        # further ones are aborted at once, so a flood holds no more sockets.
        factory = self.factory
        if factory.refusing >= factory.limits.max_per_network:
            self.transport.abortConnection()
            return
        factory.refusing += 1
        self._refusing = True
        self._responses.append(
            _Pending(api.Error(ErrorCode.BUSY, "too many connections"), close=True)
        )
        self._closing = True
        self._flush()

    def handshakeCompleted(self):
        self._handshaking = False
        self.frame_complete()

    def connectionLost(self, reason):
        self.setTimeout(None)
        self._lost = True
        self._release_leases()
        self._waiting.clear()
        self._responses.clear()
        self._set_address(None)
        if self._network is not None:
            self.factory.limits.release(self._network)
            self._network = None
        if self._refusing:
            self._refusing = False
            self.factory.refusing -= 1

    def _release_leases(self):
        factory = self.factory
        for address, lease_id in self.leases:
            d = maybeDeferred(factory.store.release, address, lease_id)
            d.addCallback(lambda released: released and factory.counters.incr("client_api.leases_released"))
            # A store that is stopping keeps the lease until it lapses.
            d.addErrback(lambda f: self.log.info("lease kept until it lapses: {why}", why=f.getErrorMessage()))
        self.leases.clear()

    def timeoutConnection(self):
        self.log.info("client connection idle or stuck; aborting")
        self.factory.counters.incr("client_api.timeout")
        self.transport.abortConnection()

    def dataReceived(self, data):
        # A closing connection's input is dropped unread: otherwise the
        # length-prefix parser would keep buffering an oversize frame.
        if self._closing:
            return
        super().dataReceived(data)
        if self._closing or self._lost:
            return
        if self._completed:
            self._completed = False
            self.frame_complete()
        # _unprocessed: the parser's buffer of an incomplete frame.  While
        # reading is paused (the peer does not read) it may hold whole
        # frames: that wait is the peer's, under the idle timeout.
        if self._unprocessed and not self.paused and not self._handshaking:
            self.frame_begins()

    def on_pause(self):
        self.factory.counters.incr("client_api.paused")

    def lengthLimitExceeded(self, length):
        self.log.warn("client announced a {length}-byte frame; closing", length=length)
        self._refuse_and_close(
            api.FrameTooLarge(f"frame of {length} bytes exceeds {self.MAX_LENGTH}")
        )

    def stringReceived(self, frame):
        if self._closing:
            return
        self._completed = True
        try:
            request = api.decode_request(frame)
        except ClientApiError as e:
            self.log.warn("bad client frame: {why}", why=e.reason)
            self._refuse_and_close(e)
            return
        self.factory.counters.incr("client_api.request", request.NAME)
        slot = _Pending(estimate=self._answer_estimate(request))
        self._responses.append(slot)
        self._waiting.append((request, slot))
        self._start_ready()
        self.owe(slot.estimate)

    def _answer_estimate(self, request):
        """The largest answer ``request`` can get, framed, in bytes."""
        if isinstance(request, api.Pull):
            # Counted at full size, padded or not: the inbox may fill it.
            return _SMALL_ANSWER + request.max_count * (api.SLOT_HEADER_LENGTH + self.factory.slot_size)
        return _SMALL_ANSWER

    # Ordering: requests start as soon as no barrier stands in their way;
    # answers leave strictly in request order.

    def _start_ready(self):
        # A handler that answers at once re-enters here through _finished;
        # the outer loop carries on instead, so the stack stays flat however
        # many requests one read delivers.
        if self._starting:
            return
        self._starting = True
        try:
            while self._waiting and not self._lost:
                request, slot = self._waiting[0]
                barrier = isinstance(request, _BARRIERS)
                if self._barrier_running or (barrier and self._running):
                    break
                self._waiting.popleft()
                self._start(request, slot, barrier)
        finally:
            self._starting = False

    def _start(self, request, slot, barrier):
        self._running += 1
        self._barrier_running = barrier
        handler = getattr(self, "_handle_" + request.NAME)
        d = maybeDeferred(handler, request)
        d.addErrback(self._as_error, request)
        d.addCallback(self._finished, slot, barrier)
        d.addErrback(lambda f: self.log.failure("client answer failed", f))

    def _finished(self, response, slot, barrier):
        self._running -= 1
        if barrier:
            self._barrier_running = False
        slot.response = response
        self._flush()
        self._start_ready()

    def _as_error(self, failure, request):
        if failure.check(ClientApiError):
            code, message = failure.value.code, failure.value.message
        else:
            self.log.failure("client {kind} request failed", failure, kind=request.NAME)
            code, message = ErrorCode.INTERNAL, "internal error"
        self.factory.counters.incr("client_api.error", api.error_reason(code))
        return api.Error(code, message, request_id=request.request_id)

    def _refuse_and_close(self, error):
        self.factory.counters.incr("client_api.error", error.reason)
        self._closing = True
        response = api.Error(error.code, error.message, request_id=error.request_id)
        self._responses.append(_Pending(response, close=True))
        self._flush()

    def _flush(self):
        while self._responses and self._responses[0].response is not None and not self._lost:
            slot = self._responses.popleft()
            data = self._encode(slot.response)
            self.transport.write(data)
            if slot.close:
                self._responses.clear()
                self._waiting.clear()
                self.transport.loseConnection()
                self.setTimeout(CLOSE_GRACE)
                return
            self.answered(slot.estimate, len(data))

    def _encode(self, response):
        try:
            return api.encode(response, fill=self.factory.random_bytes)
        except ValueError:
            self.log.failure("cannot encode a client answer", Failure())
            self.factory.counters.incr("client_api.error", "internal")
            return api.encode(
                api.Error(ErrorCode.INTERNAL, "internal error", request_id=response.request_id)
            )

    def _peer_host(self):
        peer = self.transport.getPeer()
        return getattr(peer, "host", None) or str(peer)

    # Sessions: which address this connection acts for, known to the
    # factory so that a rotation or FORGET can end the others.

    def _set_address(self, address, token_hash=None):
        if self._address is not None:
            self.factory.sessions.unbind(self._address, self)
        self._address = address
        #: The hash of the token this session proved, for a store shared
        #: with other processes to tell whether it still holds.
        self.token_hash = token_hash
        if address is not None:
            self.factory.sessions.bind(address, self)

    def revoke(self):
        """End this session at once: its token was rotated or forgotten."""
        self._set_address(None)
        if self._closing or self._lost:
            return
        # Answers not yet sent (a PULL's messages, say) are dropped with
        # the requests still waiting: none of them is for this peer now.
        self._responses.clear()
        self._waiting.clear()
        self._refuse_and_close(
            ClientApiError(ErrorCode.REVOKED, "token rotated or address forgotten")
        )


class ClientApiFactory(ServerFactory):
    """
    Shared state of the client API: store, node, keys, limits and counters.

    :param store: an ``IInboxStore``.
    :param node: has ``send_from_client(first_hop, packet) -> Deferred``.
    :param identity_key: the provider's ``nacl.signing.SigningKey``.
    :param clock: provides ``seconds()`` and ``callLater()``.
    :param counters: a :class:`nymprov.metrics.Counters`.
    :param str registration: ``"open"``, ``"invite"`` (new clients need an
        invite code) or ``"closed"`` (no new clients; registered ones may
        still rotate their token).
    :param invite_codes: accepted invite codes (``str``, taken as UTF-8, or
        ``bytes``).
    :param register_rate: ``(burst, per_seconds)`` registrations per peer IP.
    :param send_rate: ``(packets_per_second, burst)`` per client address.
    :param int pull_max: largest ``max_count`` of a PULL.
    :param int slot_size: data bytes per MESSAGES slot; at least the store's
        largest message.
    :param float lease_seconds: how long pulled messages stay leased.
    :param int max_connections: open connections before BUSY.
    :param int max_connections_per_ip: open connections from one IPv4
        address or IPv6 /64 before BUSY.
    :param float idle_timeout: seconds without a complete frame.
    :param float frame_timeout: seconds a begun frame, or the TLS
        handshake, may take.
    :param int answer_budget: bytes of answers a connection may owe before
        its requests stop being read.
    :param random_bytes: ``random_bytes(n)`` for nonces, tokens and fill.
    """

    protocol = ClientApiProtocol
    # Connections come and go all day; each one logged would be noise.
    noisy = False

    def __init__(self, store, node, identity_key, clock, counters, *,
                 registration="open", invite_codes=(), register_rate=(5, 3600.0),
                 send_rate=(200.0, 400), pull_max=64, slot_size=2048,
                 lease_seconds=60.0, max_connections=1024,
                 max_connections_per_ip=MAX_CONNECTIONS_PER_IP, idle_timeout=300.0,
                 frame_timeout=FRAME_TIMEOUT, answer_budget=ANSWER_BUDGET, random_bytes=os.urandom):
        if not 1 <= pull_max <= 0xFFFF or slot_size < 1:
            raise ValueError("pull_max must be 1..65535 and slot_size positive")
        largest = 5 + 14 + pull_max * (api.SLOT_HEADER_LENGTH + slot_size)
        if largest > api.MAX_RESPONSE_FRAME:
            raise ValueError("pull_max * slot_size exceeds the 16 MiB response limit")
        self.store = store
        self.node = node
        self.provider_identity = bytes(identity_key.verify_key)
        self.clock = clock
        self.counters = counters
        self.registration = RegistrationPolicy(registration, invite_codes, store)
        burst, per_seconds = register_rate
        self.register_limiter = TokenBucketLimiter(clock, burst / per_seconds, burst)
        rate, burst = send_rate
        self.send_limiter = TokenBucketLimiter(clock, rate, burst)
        self.pull_max = pull_max
        self.slot_size = slot_size
        self.lease_seconds = lease_seconds
        self.limits = ConnectionLimits(max_connections, max_connections_per_ip)
        self.idle_timeout = idle_timeout
        self.frame_timeout = frame_timeout
        # Refused connections still writing their BUSY.
        self.refusing = 0
        self.answer_budget = answer_budget
        self.random_bytes = random_bytes
        self.sessions = Sessions(counters)
        # A store shared by several processes tells of token changes and
        # forgets made by any of them, so that sessions here end too.
        watch = getattr(store, "add_client_observer", None)
        if watch is not None:
            watch(lambda address, token_hash: self.sessions.changed_elsewhere(address, token_hash, store))

    @property
    def connections(self):
        """How many connections are open."""
        return self.limits.total
