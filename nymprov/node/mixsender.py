"""
The mix link's sending side: one long-lived connection per neighbour.
"""

from collections import deque

from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import IPushProducer, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

from nymprov.interfaces import IMixSender
from nymprov.net.addresses import host_port_text
from nymprov.sphinx import InvalidAddress, decode_address
from nymprov.wire.frames import encode_frame

#: How long shutdown waits for queued packets to reach their neighbours.
DEFAULT_DRAIN_TIMEOUT = 5.0  # seconds

#: Without a node's stop deadline, how long after the drain closing
#: connections may take before they are aborted.
ABORT_GRACE = 1.0  # seconds


def _fire_all(deferreds):
    for d in deferreds:
        if not d.called:
            d.callback(None)


@implementer(IPushProducer)
class _OutboundProtocol(Protocol):
    """
    Writes frames to one neighbour; pauses when the kernel buffer is full.
    """

    def __init__(self, neighbour):
        self._neighbour = neighbour
        self.paused = False

    def connectionMade(self):
        self.transport.registerProducer(self, True)
        self._neighbour.connection_made(self)

    def dataReceived(self, data):
        # The mix link carries packets one way; a neighbour has nothing to
        # say to us, so whatever it sends is ignored.
        pass

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False
        self._neighbour.drain()

    def stopProducing(self):
        self.paused = True

    def connectionLost(self, reason):
        self._neighbour.disconnected(self)


class _Neighbour:
    """
    A bounded queue of frames for one node and the connection that
    carries them, reconnecting with back-off when it drops.
    """

    def __init__(self, endpoint, clock, queue_limit, counters):
        self._queue = deque()
        self._queue_limit = queue_limit
        self._counters = counters
        self._protocol = None
        self._drained = []
        self._clock = clock
        factory = Factory.forProtocol(lambda: _OutboundProtocol(self))
        # One "Starting factory" line per connection attempt is noise.
        factory.noisy = False
        self._service = ClientService(
            endpoint, factory, retryPolicy=backoffPolicy(initialDelay=0.5, maxDelay=30.0), clock=clock
        )
        self._service.startService()

    def enqueue(self, packet, key_rotation=0):
        if len(self._queue) >= self._queue_limit:
            return False
        self._queue.append(encode_frame(packet, key_rotation))
        self.drain()
        return True

    @property
    def depth(self):
        """Frames waiting to be written."""
        return len(self._queue)

    @property
    def connected(self):
        """Whether a connection carries the frames now."""
        return self._protocol is not None

    def connection_made(self, protocol):
        self._protocol = protocol
        self._counters.incr("mix_sender.connected")
        self.drain()

    def disconnected(self, protocol):
        if self._protocol is protocol:
            self._protocol = None

    def drain(self):
        protocol = self._protocol
        while self._queue and protocol is not None and not protocol.paused:
            protocol.transport.write(self._queue.popleft())
        if not self._queue and self._drained:
            waiting, self._drained = self._drained, []
            # Fired from the reactor, not from inside connectionMade: a
            # waiter that stops the pool must not re-enter the connection
            # attempt that is still completing.
            self._clock.callLater(0, _fire_all, waiting)

    def when_drained(self):
        if not self._queue:
            return succeed(None)
        d = Deferred()
        self._drained.append(d)
        return d

    def stop(self):
        dropped = len(self._queue)
        self._queue.clear()
        return dropped, self._service.stopService()

    def abort(self):
        """Drop the connection now, with whatever it has not written."""
        if self._protocol is not None:
            self._protocol.transport.abortConnection()


@implementer(IStreamClientEndpoint)
class _NamedEndpoint:
    """
    An endpoint that says which node it reaches, so that the reconnection
    lines name the peer ("Scheduling retry 2 to connect mix node
    192.0.2.1:1789") instead of an object address.
    """

    def __init__(self, endpoint, name):
        self._endpoint = endpoint
        self._name = name

    def connect(self, factory):
        return self._endpoint.connect(factory)

    def __str__(self):
        return self._name

    __repr__ = __str__


@implementer(IMixSender)
class MixSenderPool(Service):
    """
    Sends packets to other nodes over long-lived mix-link connections, one
    per neighbour, each with a bounded queue.

    :param reactor: provides ``IReactorTCP`` and ``IReactorTime``.
    :param counters: a :class:`nymprov.metrics.Counters`.
    :param int queue_limit: most frames queued per neighbour.
    :param endpoint_for: optional ``(host, port) -> IStreamClientEndpoint``,
        for tests and for wrapping the link in TLS.
    """

    log = Logger()
    name = "mix sender"

    def __init__(self, reactor, counters, *, queue_limit=10_000, endpoint_for=None,
                 drain_timeout=DEFAULT_DRAIN_TIMEOUT):
        self._reactor = reactor
        self._counters = counters
        self._queue_limit = queue_limit
        self._endpoint_for = endpoint_for or self._tcp_endpoint
        self._drain_timeout = drain_timeout
        self._neighbours = {}
        self._closed = False

    def _tcp_endpoint(self, host, port):
        if ":" in host:
            return TCP6ClientEndpoint(self._reactor, host, port, timeout=10)
        return TCP4ClientEndpoint(self._reactor, host, port, timeout=10)

    def send(self, address, packet, key_rotation=0):
        """IMixSender API"""
        if self._closed:
            return False
        neighbour = self._neighbours.get(address)
        if neighbour is None:
            try:
                host, port = decode_address(address)
            except InvalidAddress:
                self._counters.incr("mix_sender.bad_address")
                return False
            neighbour = _Neighbour(
                _NamedEndpoint(self._endpoint_for(host, port), f"mix node {host_port_text(host, port)}"),
                self._reactor, self._queue_limit, self._counters
            )
            self._neighbours[address] = neighbour
        return neighbour.enqueue(packet, key_rotation)

    def queue_depths(self):
        """
        :returns: ``{(host, port): frames queued}`` for every neighbour,
            and whether it is connected: ``{(host, port): (depth, bool)}``.
        """
        return {
            decode_address(address): (neighbour.depth, neighbour.connected)
            for address, neighbour in self._neighbours.items()
        }

    def stopService(self):
        """
        Give queued packets until the drain timeout (or the node's stop
        deadline, if sooner) to leave, then close every link, aborting at
        the deadline those a neighbour does not read from; what was still
        queued is counted as dropped for ``shutdown``.
        """
        Service.stopService(self)
        self._closed = True
        neighbours = list(self._neighbours.values())
        self._neighbours.clear()
        deadline = getattr(self.parent, "stop_deadline", None)
        if deadline is None:
            deadline = self._reactor.seconds() + self._drain_timeout + ABORT_GRACE
        budget = max(0.0, min(self._drain_timeout, deadline - self._reactor.seconds()))
        waiting = DeferredList([n.when_drained() for n in neighbours], consumeErrors=True)
        timer = self._reactor.callLater(budget, waiting.cancel)

        def close(_):
            if timer.active():
                timer.cancel()
            stops = []
            dropped = 0
            for neighbour in neighbours:
                left, d = neighbour.stop()
                dropped += left
                stops.append(d)
            if dropped:
                self._counters.incr("packets.dropped", "shutdown", dropped)
            closed = DeferredList(stops)
            # Closing waits for what the transport still buffers to be
            # written, forever if the neighbour never reads: abort then.
            abort = self._reactor.callLater(
                max(0.0, deadline - self._reactor.seconds()), lambda: [n.abort() for n in neighbours]
            )
            return closed.addBoth(lambda result: (abort.active() and abort.cancel(), result)[1])

        waiting.addBoth(close)
        return waiting
