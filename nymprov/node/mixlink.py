"""
The mix link's receiving side: frames from mix nodes into the node core.
"""

from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger

from nymprov.errors import NymProvError
from nymprov.net.connlimit import ConnectionLimits
from nymprov.net.deadlines import FrameDeadlines
from nymprov.sphinx import SphinxError
from nymprov.wire.frames import FrameDecoder, FrameError

#: A connection with this many packets still waiting for the store stops
#: being read, so a fast mix node slows down instead of growing our memory;
#: reading resumes below the low mark.
HIGH_WATER = 2048
LOW_WATER = 512

#: Connections at most from one IPv4 address or IPv6 /64, beside the cap on
#: all connections: one host cannot take every slot.
MAX_CONNECTIONS_PER_IP = 128

#: Seconds a frame may take from its first byte to its last.
FRAME_TIMEOUT = 30.0

_REFUSALS = {"total": "too_many_connections", "per_ip": "too_many_from_peer"}


class MixLinkProtocol(Protocol, FrameDeadlines):
    """
    Reads Nym frames from one mix node and hands each packet to the node.

    A peer that sends a bad frame header is cut off at once: frames have no
    resynchronisation point, so nothing after it could be trusted.
    """

    log = Logger()

    def __init__(self):
        self._decoder = FrameDecoder()
        self._in_flight = 0
        self._paused = False
        self._network = None

    def connectionMade(self):
        factory = self.factory
        host = getattr(self.transport.getPeer(), "host", "")
        self._network = factory.limits.admit(host)
        if self._network is None:
            reason = factory.limits.refusal(host)
            factory.counters.incr("mix_link.refused", _REFUSALS[reason])
            self.transport.abortConnection()
            return
        factory.counters.incr("mix_link.connections")
        self.frame_complete()

    def dataReceived(self, data):
        try:
            frames = self._decoder.feed(data)
        except FrameError as e:
            self.factory.counters.incr("mix_link.frame_error", e.reason)
            self.log.warn("mix link peer sent a bad frame ({reason}); disconnecting", reason=e.reason)
            # The whole frames before the bad header are as good as any.
            self._take(e.frames_before)
            self.transport.abortConnection()
            return
        if frames:
            self.frame_complete()
            self._take(frames)
        if self._decoder.buffered:
            self.frame_begins()
        if self._in_flight >= HIGH_WATER and not self._paused:
            self._paused = True
            self.transport.pauseProducing()

    def _take(self, frames):
        if not frames:
            return
        self._in_flight += len(frames)
        packets = [frame.packet for frame in frames]
        rotations = [frame.key_rotation for frame in frames]
        for d in self.factory.node.receive_many_from_mix(packets, rotations):
            d.addBoth(self._packet_done)

    def _packet_done(self, result):
        self._in_flight -= 1
        if self._paused and self._in_flight <= LOW_WATER:
            self._paused = False
            self.transport.resumeProducing()
        if hasattr(result, "check") and not result.check(NymProvError, SphinxError):
            # Typed refusals were counted by the node; anything else is ours.
            self.log.failure("unexpected error handling a mix packet", result)
        return None

    def timeoutConnection(self):
        self.factory.counters.incr("mix_link.idle_timeout", "frame" if self.frame_begun else "idle")
        self.transport.abortConnection()

    def connectionLost(self, reason):
        self.setTimeout(None)
        if self._network is not None:
            self.factory.limits.release(self._network)
            self._network = None


class MixLinkFactory(Factory):
    """
    Builds :class:`MixLinkProtocol` for one node core.

    :param node: the :class:`nymprov.node.core.NodeCore`.
    :param counters: a :class:`nymprov.metrics.Counters`.
    :param clock: the ``IReactorTime`` for idle timeouts.
    :param int max_connections: connections at most.
    :param int max_connections_per_ip: connections at most from one IPv4
        address or IPv6 /64.
    :param float idle_timeout: seconds from the last complete frame.
    :param float frame_timeout: seconds a begun frame may take.
    """

    protocol = MixLinkProtocol
    # Connections come and go all day; each one logged would be noise.
    noisy = False

    def __init__(self, node, counters, clock, *, max_connections=1024,
                 max_connections_per_ip=MAX_CONNECTIONS_PER_IP, idle_timeout=600.0,
                 frame_timeout=FRAME_TIMEOUT):
        self.node = node
        self.clock = clock
        self.counters = counters
        self.limits = ConnectionLimits(max_connections, max_connections_per_ip)
        self.idle_timeout = idle_timeout
        self.frame_timeout = frame_timeout

    @property
    def connections(self):
        """How many connections are open."""
        return self.limits.total
