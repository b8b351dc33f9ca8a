"""
The mix link's receiving side: frames from mix nodes into the node core.
"""

from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin

from nymprov.errors import NymProvError
from nymprov.sphinx import SphinxError
from nymprov.wire.frames import FrameDecoder, FrameError

#: A connection with this many packets still waiting for the store stops
#: being read, so a fast mix node slows down instead of growing our memory;
#: reading resumes below the low mark.
HIGH_WATER = 2048
LOW_WATER = 512


class MixLinkProtocol(Protocol, TimeoutMixin):
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
        self._counted = False

    def connectionMade(self):
        factory = self.factory
        if factory.connections >= factory.max_connections:
            factory.counters.incr("mix_link.refused", "too_many_connections")
            self.transport.abortConnection()
            return
        factory.connections += 1
        self._counted = True
        factory.counters.incr("mix_link.connections")
        self.setTimeout(factory.idle_timeout)

    def dataReceived(self, data):
        self.resetTimeout()
        try:
            frames = self._decoder.feed(data)
        except FrameError as e:
            self.factory.counters.incr("mix_link.frame_error", e.reason)
            self.log.warn("mix link peer sent a bad frame ({reason}); disconnecting", reason=e.reason)
            self.transport.abortConnection()
            return
        if frames:
            self._in_flight += len(frames)
            packets = [frame.packet for frame in frames]
            rotations = [frame.key_rotation for frame in frames]
            for d in self.factory.node.receive_many_from_mix(packets, rotations):
                d.addBoth(self._packet_done)
        if self._in_flight >= HIGH_WATER and not self._paused:
            self._paused = True
            self.transport.pauseProducing()

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
        self.factory.counters.incr("mix_link.idle_timeout")
        self.transport.abortConnection()

    def connectionLost(self, reason):
        self.setTimeout(None)
        if self._counted:
            self.factory.connections -= 1
            self._counted = False


class MixLinkFactory(Factory):
    """
    Builds :class:`MixLinkProtocol` for one node core.

    :param node: the :class:`nymprov.node.core.NodeCore`.
    :param counters: a :class:`nymprov.metrics.Counters`.
    :param clock: the ``IReactorTime`` for idle timeouts.
    """

    protocol = MixLinkProtocol
    # Connections come and go all day; each one logged would be noise.
    noisy = False

    def __init__(self, node, counters, clock, *, max_connections=1024, idle_timeout=600.0):
        self.node = node
        self.clock = clock
        self.counters = counters
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.connections = 0

    def buildProtocol(self, addr):
        protocol = Factory.buildProtocol(self, addr)
        protocol.callLater = self.clock.callLater
        return protocol
