"""
The nodes' start and stop, on the real reactor with real sockets, worker
processes and SQLite: a stop during start leaves nothing behind, and a
neighbour that never reads cannot hold a stop past its deadline.
"""

import os
import socket
import time

from nacl.signing import SigningKey
from twisted.application.service import Service
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from nymprov.client import session as provider_client
from nymprov.mixnode.config import MixNodeConfig
from nymprov.mixnode.service import MixNodeService
from nymprov.node.service import NodeService, StartFailure, chore
from nymprov.provider.config import ProviderConfig
from nymprov.provider.service import ProviderService
from nymprov.sphinx import Destination, KeyPair, Node, PacketSize, build_packet, encode_address
from nymprov.topology import ProviderNode, Topology
from nymprov.wire.frames import encode_frame

from tests.support import wait_for

LOOPBACK = "tcp:0:interface=127.0.0.1"

#: Enough packets to fill the kernel's buffers on both ends of a loopback
#: connection nobody reads, and the transport's, with some left queued.
FLOOD = 3000

#: The stop deadline these tests give a node, and the slack allowed beyond.
STOP_TIMEOUT = 2.0
SLACK = 2.0


def reactor_state():
    """What the reactor holds for others than itself: selectables and pending timers."""
    selectables = {
        selectable
        for selectable in set(reactor.getReaders()) | set(reactor.getWriters())
        # The reactor's own wakers come and go with its signal handling.
        if type(selectable).__module__ not in ("twisted.internet._signals", "twisted.internet.posixbase")
    }
    calls = {
        call
        for call in reactor.getDelayedCalls()
        # Trial's own timeout for the running test.
        if call.active() and getattr(call.func, "__name__", "") != "onTimeout"
    }
    return selectables, calls


class StopDuringStartTests(TestCase):
    """``startService(); stopService()`` leaves no port, process or timer."""

    timeout = 60

    async def check_nothing_left(self, service):
        selectables, calls = reactor_state()
        service.startService()
        await service.stopService()
        # Whatever the start had under way when the stop came has finished
        # once the start has an outcome.
        try:
            await service.when_started()
        except Exception:
            pass
        await wait_for(lambda: reactor_state()[0] <= selectables, "selectables to go")
        # Calls already due (a Deferred fired on the next turn) run at once;
        # a timer left behind would stay.
        await wait_for(lambda: reactor_state()[1] <= calls, "timers to go", limit=5)
        left_selectables, left_calls = reactor_state()
        self.assertEqual(left_selectables - selectables, set())
        self.assertEqual(left_calls - calls, set())
        self.assertFalse(service.running)

    def test_provider(self):
        """A provider with a worker process and SQLite, stopped at once."""
        config = ProviderConfig(
            data_dir=self.mktemp(), mix_listen=[LOOPBACK], client_listen=[LOOPBACK],
            unwrap_workers=1, stats_interval=30,
        )
        return self.check_nothing_left(ProviderService(config, reactor))

    def test_mixnode(self):
        """A mix node, stopped at once."""
        config = MixNodeConfig(data_dir=self.mktemp(), mix_listen=[LOOPBACK], stats_interval=30)
        return self.check_nothing_left(MixNodeService(config, reactor, topology=Topology()))


class NeverReads:
    """
    A real listening socket whose connections are accepted and never read,
    with a small receive buffer so that a sender fills it quickly.
    """

    def __init__(self):
        self.socket = socket.socket()
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(8)
        self.socket.setblocking(False)
        self.accepted = []
        self.host, self.port = self.socket.getsockname()

    def accept(self):
        """Accept what is waiting (never reading it); :returns: how many are open."""
        try:
            while True:
                self.accepted.append(self.socket.accept()[0])
        except BlockingIOError:
            pass
        return len(self.accepted)

    def close(self):
        for connection in self.accepted:
            connection.close()
        self.socket.close()


class LogLines:
    """The log events of a test, by their formatted text."""

    def __init__(self, test):
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        test.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def matching(self, text):
        from twisted.logger import formatEvent

        return [formatEvent(e) for e in self.events if text in formatEvent(e)]


class NeverReadingNeighbourTests(TestCase):
    """A neighbour that accepts and never reads cannot hold a stop past its deadline."""

    timeout = 120

    def setUp(self):
        self.neighbour = NeverReads()
        self.addCleanup(self.neighbour.close)
        self.logs = LogLines(self)

    async def stop_within_deadline(self, service):
        service.stop_timeout = STOP_TIMEOUT
        started = time.monotonic()
        await service.stopService()
        elapsed = time.monotonic() - started
        self.assertLess(elapsed, STOP_TIMEOUT + SLACK)
        # What could not be sent is counted by reason, and logged once.
        self.assertGreater(service.counters.get("packets.dropped", "shutdown"), 0)
        self.assertEqual(len(self.logs.matching("packets were dropped while stopping")), 1)
        [final] = self.logs.matching(f"{service.name} stopped; stats: ")
        self.assertIn("'packets.dropped.shutdown': ", final)

    async def test_provider(self):
        """
        A provider relaying its clients' packets to a first-layer mix that
        never reads stops within its deadline.
        """
        first_layer = f"{self.neighbour.host}:{self.neighbour.port}"
        config = ProviderConfig(
            data_dir=self.mktemp(), mix_listen=[LOOPBACK], client_listen=[LOOPBACK],
            client_tls=False, stats_interval=0, first_layer=[first_layer], send_rate=1e6,
            unwrap_workers=0,
        )
        service = ProviderService(config, reactor)
        service.startService()
        self.addCleanup(lambda: service.running and service.stopService())
        await service.when_started()
        address = service.client_ports[0].getHost()
        session = await provider_client.connect(reactor, address.host, address.port)
        self.addCleanup(session.close)
        await session.register(SigningKey.generate())
        first_hop = encode_address(self.neighbour.host, self.neighbour.port)
        packet = os.urandom(PacketSize.REGULAR.packet_size)
        for start in range(0, FLOOD, 100):
            for _ in range(100):
                session.send(first_hop, packet)
            await wait_for(lambda: service.counters.get("packets.relayed") >= start + 100, "relaying")
        await wait_for(lambda: self.neighbour.accept() == 1, "the link to the neighbour")
        await self.stop_within_deadline(service)

    async def test_mixnode(self):
        """A mix node whose next hop never reads stops within its deadline."""
        identity = bytes(SigningKey.generate().verify_key)
        blackhole = ProviderNode(identity, KeyPair.generate().public_bytes,
                                 self.neighbour.host, self.neighbour.port, "127.0.0.1", 1)
        config = MixNodeConfig(data_dir=self.mktemp(), mix_listen=[LOOPBACK], stats_interval=0)
        mix = MixNodeService(config, reactor, topology=Topology(providers=[blackhole]))
        mix.startService()
        self.addCleanup(lambda: mix.running and mix.stopService())
        await mix.when_started()
        [own] = mix.node.own_addresses
        route = [Node(own, mix.keys.sphinx.public_bytes), blackhole.route_node]
        destination = Destination(b"\1" * 32, b"\0" * 16)
        address = mix.mix_ports[0].getHost()
        link = Protocol()
        await connectProtocol(TCP4ClientEndpoint(reactor, address.host, address.port), link)
        self.addCleanup(link.transport.abortConnection)
        for start in range(0, FLOOD, 100):
            frames = [encode_frame(build_packet(b"x", route, [0, 0], destination)) for _ in range(100)]
            link.transport.write(b"".join(frames))
            await wait_for(lambda: mix.counters.get("packets.forwarded") >= start + 100, "forwarding")
        await wait_for(lambda: self.neighbour.accept() == 1, "the link to the neighbour")
        await self.stop_within_deadline(mix)



class _Recorded(Service):
    """A part whose start and stop each wait for the test to fire them."""

    def __init__(self, name, events):
        self.name = name
        self._events = events
        self.pending = None

    def startService(self):
        Service.startService(self)
        self._events.append(("start", self.name))
        self.pending = Deferred()
        return self.pending

    def stopService(self):
        Service.stopService(self)
        self._events.append(("stop", self.name))
        self.pending = Deferred()
        return self.pending


class _Tree(NodeService):
    name = "tree"

    def __init__(self, clock, names, events):
        NodeService.__init__(self, clock)
        self.parts = [_Recorded(name, events) for name in names]

    def assemble(self):
        for part in self.parts:
            part.setServiceParent(self)

    def stats_line(self):
        return "stats: {}"


class TreeOrderTests(SynchronousTestCase):
    """The base tree starts each part after the one before it, and stops in reverse."""

    def test_order_and_waiting(self):
        """Each start and each stop waits for the previous part's Deferred."""
        events = []
        tree = _Tree(Clock(), ["store", "core", "listeners"], events)
        tree.startService()
        store, core, listeners = tree.parts
        self.assertEqual(events, [("start", "store")])
        store.pending.callback(None)
        core.pending.callback(None)
        self.assertEqual(events[-1], ("start", "listeners"))
        listeners.pending.callback(None)
        self.successResultOf(tree.when_started())
        del events[:]
        stopped = tree.stopService()
        self.assertEqual(events, [("stop", "listeners")])
        listeners.pending.callback(None)
        self.assertEqual(events[-1], ("stop", "core"))
        self.assertNoResult(stopped)
        core.pending.callback(None)
        store.pending.callback(None)
        self.successResultOf(stopped)
        self.assertEqual(events, [("stop", "listeners"), ("stop", "core"), ("stop", "store")])

    def test_stop_while_starting(self):
        """A stop during a part's start waits for it, starts nothing more, and stops what started."""
        events = []
        tree = _Tree(Clock(), ["store", "core", "listeners"], events)
        tree.startService()
        store = tree.parts[0]
        stopped = tree.stopService()
        self.assertNoResult(stopped)
        store.pending.callback(None)
        self.assertEqual(events, [("start", "store"), ("stop", "store")])
        store.pending.callback(None)
        self.successResultOf(stopped)
        self.failureResultOf(tree.when_started(), StartFailure)


class ChoreTests(SynchronousTestCase):
    """The periodic chores of a node's tree."""

    def test_first_call_waits_an_interval_when_asked(self):
        """A chore started with at_start=False runs first after one interval (the stats line)."""
        clock, calls, first_calls = Clock(), [], []
        later = chore(clock, 60.0, lambda: calls.append(clock.seconds()), "stats", at_start=False)
        now = chore(clock, 60.0, lambda: first_calls.append(clock.seconds()), "expiry")
        later.startService()
        now.startService()
        self.assertEqual((calls, first_calls), ([], [0.0]))
        clock.advance(60.0)
        clock.advance(60.0)
        self.assertEqual((calls, first_calls), ([60.0, 120.0], [0.0, 60.0, 120.0]))
        later.stopService()
        now.stopService()
