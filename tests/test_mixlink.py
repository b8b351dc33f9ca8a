"""
Tests for the mix link: the receiving protocol with StringTransport and a
Clock, and the sending pool over real loopback TCP.
"""

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from nymprov.interfaces import IMixSender
from nymprov.metrics import Counters
from nymprov.node import mixlink
from nymprov.node.mixlink import MixLinkFactory
from nymprov.node.mixsender import MixSenderPool
from nymprov.sphinx import PacketSize, encode_address
from nymprov.wire.frames import FrameDecoder, encode_frame


def packet(n, size=PacketSize.REGULAR):
    """A packet-sized byte string numbered ``n`` (the link never looks inside)."""
    return n.to_bytes(4, "big") * (size.packet_size // 4) + b"\x00" * (size.packet_size % 4)


class RecordingNode:
    """Stands in for the node core; answers each packet when told to."""

    def __init__(self, answer_at_once=True):
        self.packets = []
        self.pending = []
        self.answer_at_once = answer_at_once

    def receive_many_from_mix(self, packets, rotations=None):
        self.packets.extend(packets)
        if self.answer_at_once:
            return [succeed(None) for _ in packets]
        ds = [Deferred() for _ in packets]
        self.pending.extend(ds)
        return ds


class ReceivingProtocolTests(SynchronousTestCase):
    """
    The receiving side reads frames in any chunking, cuts off bad peers and
    slows down fast ones.
    """

    def connect(self, node=None, max_connections=10, **limits):
        self.clock = Clock()
        self.counters = Counters()
        self.node = node or RecordingNode()
        self.factory = MixLinkFactory(self.node, self.counters, self.clock, max_connections=max_connections,
                                      idle_timeout=60.0, **limits)
        protocol = self.factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    @given(st.lists(st.sampled_from(list(PacketSize)), min_size=1, max_size=6), st.data())
    def test_any_chunking(self, sizes, data):
        """
        Frames split anywhere reach the node whole and in order.
        """
        protocol, transport = self.connect()
        packets = [packet(i, size) for i, size in enumerate(sizes)]
        wire = b"".join(encode_frame(p) for p in packets)
        cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=10)))
        for start, end in zip([0] + cuts, cuts + [len(wire)]):
            protocol.dataReceived(wire[start:end])
        self.assertEqual(self.node.packets, packets)
        self.assertFalse(transport.disconnecting)

    def test_bad_header_disconnects(self):
        """
        An unknown packet type cuts the connection at once and is counted;
        nothing reaches the node.
        """
        protocol, transport = self.connect()
        protocol.dataReceived(bytes([7, 1, 2]) + b"\x00" * 10)
        self.assertTrue(transport.disconnected)
        self.assertEqual(self.node.packets, [])
        self.assertEqual(self.counters.get("mix_link.frame_error", "unknown_packet_type"), 1)

    def test_back_pressure(self):
        """
        With too many packets waiting on the store the connection stops
        being read, and reading resumes once most of them are done.
        """
        protocol, transport = self.connect(RecordingNode(answer_at_once=False))
        frames = b"".join(encode_frame(packet(i, PacketSize.ACK)) for i in range(mixlink.HIGH_WATER))
        protocol.dataReceived(frames)
        self.assertEqual(transport.producerState, "paused")
        for d in self.node.pending[: mixlink.HIGH_WATER - mixlink.LOW_WATER - 1]:
            d.callback(None)
        self.assertEqual(transport.producerState, "paused")
        self.node.pending[mixlink.HIGH_WATER - mixlink.LOW_WATER - 1].callback(None)
        self.assertEqual(transport.producerState, "producing")

    def test_idle_timeout(self):
        """
        A peer that sends nothing for the idle timeout is cut off.
        """
        protocol, transport = self.connect()
        self.clock.advance(59)
        protocol.dataReceived(encode_frame(packet(1)))
        self.clock.advance(59)
        self.assertFalse(transport.disconnected)
        self.clock.advance(2)
        self.assertTrue(transport.disconnected)
        self.assertEqual(self.counters.get("mix_link.idle_timeout", "idle"), 1)

    def test_idle_counts_from_complete_frames(self):
        """
        Bytes that never complete a frame keep nothing open: a peer that
        sends a byte a second is cut off once the frame timeout has passed
        since the frame's first byte, and counted as such.
        """
        protocol, transport = self.connect(frame_timeout=5.0)
        frame = encode_frame(packet(1))
        for byte in frame[:5]:
            self.assertFalse(transport.disconnected)
            protocol.dataReceived(bytes([byte]))
            self.clock.advance(1)
        self.assertTrue(transport.disconnected)
        self.assertEqual(self.counters.get("mix_link.idle_timeout", "frame"), 1)

    def test_frame_deadline_within_idle(self):
        """
        A frame begun just before the idle timeout does not extend it.
        """
        protocol, transport = self.connect(frame_timeout=30.0)
        self.clock.advance(58)
        protocol.dataReceived(encode_frame(packet(1))[:10])
        self.clock.advance(2)
        self.assertTrue(transport.disconnected)

    def test_connections_per_address(self):
        """
        One IPv4 address, or one IPv6 /64, gets at most its share of the
        connections; another address still gets in.
        """
        self.connect(max_connections=10, max_connections_per_ip=2)

        def from_host(host):
            protocol = self.factory.buildProtocol(None)
            transport = StringTransport(peerAddress=IPv6Address("TCP", host, 1) if ":" in host
                                        else IPv4Address("TCP", host, 1))
            protocol.makeConnection(transport)
            return transport

        self.assertFalse(from_host("192.0.2.1").disconnected)
        self.assertFalse(from_host("192.0.2.1").disconnected)
        self.assertTrue(from_host("192.0.2.1").disconnected)
        self.assertFalse(from_host("192.0.2.2").disconnected)
        self.assertFalse(from_host("2001:db8::1").disconnected)
        self.assertFalse(from_host("2001:db8::2").disconnected)
        self.assertTrue(from_host("2001:db8::ffff:1").disconnected)
        self.assertFalse(from_host("2001:db8:0:1::1").disconnected)
        self.assertEqual(self.counters.get("mix_link.refused", "too_many_from_peer"), 2)

    def test_connection_limit(self):
        """
        Connections above the limit are refused and counted; a closed one
        frees its place.
        """
        first, _ = self.connect(max_connections=1)
        second = self.factory.buildProtocol(None)
        transport = StringTransport()
        second.makeConnection(transport)
        self.assertTrue(transport.disconnected)
        self.assertEqual(self.counters.get("mix_link.refused", "too_many_connections"), 1)
        first.connectionLost(None)
        third = self.factory.buildProtocol(None)
        transport = StringTransport()
        third.makeConnection(transport)
        self.assertFalse(transport.disconnected)

    def test_unexpected_error_logged(self):
        """
        An untyped failure from the node is logged, not lost.
        """
        class Exploding(RecordingNode):
            def receive_many_from_mix(self, packets, rotations=None):
                from twisted.internet.defer import fail

                return [fail(RuntimeError("bug")) for _ in packets]

        protocol, _ = self.connect(Exploding())
        protocol.dataReceived(encode_frame(packet(1)))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class FrameSink(Protocol):
    """A neighbour that decodes what it receives."""

    def __init__(self, received):
        self._decoder = FrameDecoder()
        self._received = received

    def dataReceived(self, data):
        self._received.extend(frame.packet for frame in self._decoder.feed(data))


class SendingPoolTests(TestCase):
    """
    The pool keeps one connection per neighbour, queues while it connects
    and bounds its queue.
    """

    async def wait_for(self, predicate):
        for _ in range(1000):
            if predicate():
                return
            await deferLater(reactor, 0.01, lambda: None)
        self.fail("timed out")

    async def listen(self, received, connections):
        def build():
            connections.append(1)
            return FrameSink(received)

        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Factory.forProtocol(build))
        self.addCleanup(port.stopListening)
        return encode_address("127.0.0.1", port.getHost().port)

    def test_delivers_in_order_over_one_connection(self):
        """
        Packets for one neighbour arrive in order over a single connection,
        and stopping the pool lets queued packets out first.
        """
        return ensureDeferred(self._in_order())

    async def _in_order(self):
        received, connections = [], []
        address = await self.listen(received, connections)
        pool = MixSenderPool(reactor, Counters())
        verifyObject(IMixSender, pool)
        pool.startService()
        packets = [packet(i) for i in range(50)]
        for p in packets:
            self.assertTrue(pool.send(address, p))
        await pool.stopService()
        await self.wait_for(lambda: len(received) == 50)
        self.assertEqual(received, packets)
        self.assertEqual(len(connections), 1)
        self.assertFalse(pool.send(address, packet(99)))

    def test_bounded_queue(self):
        """
        While a neighbour is unreachable its queue fills to the bound and
        then refuses; the refused packets are the caller's to count.
        """
        return ensureDeferred(self._bounded())

    async def _bounded(self):
        counters = Counters()
        # Nothing listens on this port (it was just freed), so the queue
        # cannot drain.
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Factory.forProtocol(Protocol))
        address = encode_address("127.0.0.1", port.getHost().port)
        await port.stopListening()
        pool = MixSenderPool(reactor, counters, queue_limit=3, drain_timeout=0.2)
        results = [pool.send(address, packet(i)) for i in range(5)]
        self.assertEqual(results, [True, True, True, False, False])
        await pool.stopService()
        self.assertEqual(counters.get("packets.dropped", "shutdown"), 3)

    def test_bad_address(self):
        """
        An address that is no socket address is refused and counted.
        """
        counters = Counters()
        pool = MixSenderPool(reactor, counters)
        self.assertFalse(pool.send(b"\x09" * 32, packet(1)))
        self.assertEqual(counters.get("mix_sender.bad_address"), 1)
        return pool.stopService()
