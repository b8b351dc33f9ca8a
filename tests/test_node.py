"""
Tests for nymprov.node.core: the fate of each packet, with a Clock for time.
"""

from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from nymprov.backends.inbox import InboxProvider
from nymprov.errors import BackendTimeout, PacketRefused, UnknownDestination
from nymprov.interfaces import IMixSender, IProvider, IReplayCache
from nymprov.metrics import Counters
from nymprov.node.core import NodeCore
from nymprov.sphinx import (
    BadMAC,
    Destination,
    KeyPair,
    Node,
    ReplayedPacket,
    build_packet,
    encode_address,
)
from nymprov.storage.memory import MemoryStore
from nymprov.topology import StaticTopology
from nymprov.node.unwrap import unwrap_final

PROVIDER_ADDRESS = encode_address("127.0.0.1", 1789)
MIX_ADDRESS = encode_address("127.0.0.1", 1790)
OTHER_ADDRESS = encode_address("127.0.0.1", 1791)
OTHER_PROVIDER = encode_address("127.0.0.1", 1792)
CLIENT = b"\x11" * 32
SURB_ID = b"\x22" * 16


@implementer(IMixSender)
class RecordingSender:
    """An IMixSender that keeps what it is given, or refuses when full."""

    def __init__(self, accept=True):
        self.sent = []
        self.accept = accept

    def send(self, address, packet, key_rotation=0):
        if not self.accept:
            return False
        self.sent.append((address, packet))
        return True


@implementer(IProvider)
class ScriptedProvider:
    """An IProvider whose deliver returns what the test says."""

    name = "scripted"

    def __init__(self, result):
        self.result = result
        self.calls = []

    def deliver(self, message):
        self.calls.append(message)
        return self.result()


@implementer(IReplayCache)
class SlowReplayCache:
    """An IReplayCache that answers only when the test fires it."""

    def __init__(self):
        self.pending = []

    def check_and_record(self, tag):
        d = Deferred()
        self.pending.append(d)
        return d


class NodeFixture:
    """A node core on a Clock with a real in-memory store."""

    def make_node(self, provider=None, replay=None, sender=None, max_delay=30.0, role="provider", unwrapper=None):
        self.clock = Clock()
        self.counters = Counters()
        self.keypair = KeyPair.generate()
        self.store = MemoryStore(self.clock)
        self.successResultOf(self.store.register(CLIENT, b"\x00" * 32, 0))
        self.provider = provider or InboxProvider(self.store, self.clock)
        self.sender = sender or RecordingSender()
        self.node = NodeCore(
            self.keypair,
            replay or self.store,
            self.provider,
            self.sender,
            StaticTopology([MIX_ADDRESS], [OTHER_PROVIDER]),
            self.clock,
            self.counters,
            max_delay=max_delay,
            role=role,
            unwrapper=unwrapper,
        )
        self.node.add_own_address(PROVIDER_ADDRESS)
        self.mix_key = KeyPair.generate()
        return self.node

    def final_packet(self, message=b"hello", destination=CLIENT):
        """A one-hop packet whose final hop is this node."""
        return build_packet(
            message,
            [Node(PROVIDER_ADDRESS, self.keypair.public_bytes)],
            [0],
            Destination(destination, SURB_ID),
        )

    def loopix_packet(self, delay_ns=0, next_address=MIX_ADDRESS):
        """A client packet with this node as first hop and a mix after it."""
        return build_packet(
            b"through the mixnet",
            [Node(PROVIDER_ADDRESS, self.keypair.public_bytes), Node(next_address, self.mix_key.public_bytes)],
            [delay_ns, 0],
            Destination(b"\x33" * 32, SURB_ID),
        )

    def inbox(self, address=CLIENT):
        _lease, messages = self.successResultOf(self.store.lease(address, 100, 0, 60))
        return [body for _id, body in messages]


@implementer(IReplayCache)
class BrokenReplayCache:
    """An IReplayCache whose every check fails (a database away)."""

    def check_and_record(self, tag):
        return fail(OSError("disk I/O error"))


class ReplayCacheFailureTests(NodeFixture, SynchronousTestCase):
    """A replay cache that fails drops the packet, counted and typed."""

    def test_final_hop(self):
        """A final hop whose replay check fails is dropped as replay_cache_error."""
        node = self.make_node(replay=BrokenReplayCache())
        [d] = node.receive_many_from_mix([self.final_packet()])
        self.failureResultOf(d, PacketRefused)
        self.assertEqual(self.counters.get("packets.dropped", "replay_cache_error"), 1)
        self.assertEqual(self.inbox(), [])
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

    def test_forward_hop(self):
        """So is a forward hop."""
        node = self.make_node(replay=BrokenReplayCache())
        d = node.send_from_client(PROVIDER_ADDRESS, self.loopix_packet())
        self.failureResultOf(d, PacketRefused)
        self.assertEqual(self.counters.get("packets.dropped", "replay_cache_error"), 1)
        self.assertEqual(node.delayed_count, 0)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)


class FromMixTests(NodeFixture, SynchronousTestCase):
    """
    Packets from the mix link must be final hops and reach the backend once.
    """

    def test_interfaces(self):
        """
        The in-memory store, the inbox backend and the test doubles provide
        the interfaces the node asks for.
        """
        self.make_node()
        verifyObject(IReplayCache, self.store)
        verifyObject(IProvider, self.provider)
        verifyObject(IMixSender, self.sender)

    def test_final_hop_delivered(self):
        """
        A final hop for a registered client is unwrapped and its message is
        committed to that client's inbox.
        """
        node = self.make_node()
        self.successResultOf(node.receive_from_mix(self.final_packet(b"hello")))
        self.assertEqual(self.inbox(), [b"hello"])
        self.assertEqual(self.counters.get("packets.delivered"), 1)

    def test_replay_refused(self):
        """
        The same packet a second time is refused as a replay, counted, and
        stores nothing more.
        """
        node = self.make_node()
        packet = self.final_packet()
        self.successResultOf(node.receive_from_mix(packet))
        self.failureResultOf(node.receive_from_mix(packet), ReplayedPacket)
        self.assertEqual(self.inbox(), [b"hello"])
        self.assertEqual(self.counters.get("packets.dropped", "replay"), 1)

    def test_bad_mac_changes_nothing(self):
        """
        A packet with a flipped header bit fails its MAC, is counted and
        records no replay tag: the intact packet is still accepted after it.
        """
        node = self.make_node()
        packet = self.final_packet()
        broken = bytearray(packet)
        broken[100] ^= 0x04
        self.failureResultOf(node.receive_from_mix(bytes(broken)), BadMAC)
        self.assertEqual(self.inbox(), [])
        self.assertEqual(self.counters.get("packets.dropped", "bad_mac"), 1)
        self.successResultOf(node.receive_from_mix(packet))
        self.assertEqual(self.inbox(), [b"hello"])

    def test_forward_hop_from_mix_refused(self):
        """
        A forward hop arriving from the mix link is refused: a provider is
        not a mix layer.
        """
        node = self.make_node()
        failure = self.failureResultOf(node.receive_from_mix(self.loopix_packet()), PacketRefused)
        self.assertEqual(failure.value.reason, "route_refused")
        self.assertEqual(self.sender.sent, [])

    def test_unknown_destination(self):
        """
        A final hop for an address that never registered is dropped and
        counted by reason.
        """
        node = self.make_node()
        packet = self.final_packet(destination=b"\x44" * 32)
        self.failureResultOf(node.receive_from_mix(packet), UnknownDestination)
        self.assertEqual(self.counters.get("packets.dropped", "unknown_destination"), 1)
        self.assertEqual(self.counters.get("backend.inbox.failed", "unknown_destination"), 1)

    def test_backend_overdue_is_awaited(self):
        """
        A backend that has not answered by the deadline is counted overdue
        and still awaited: its late answer decides the packet's fate.
        """
        held = []
        provider = ScriptedProvider(lambda: held.append(Deferred()) or held[-1])
        node = self.make_node(provider=provider)
        d = node.receive_from_mix(self.final_packet())
        self.clock.advance(30)
        self.assertNoResult(d)
        self.assertEqual(self.counters.get("backend.scripted.overdue"), 1)
        self.assertEqual(self.counters.get("packets.dropped", "backend_timeout"), 0)
        self.clock.advance(300)
        self.assertEqual(self.counters.get("backend.scripted.overdue"), 1)
        held[0].callback(None)
        self.successResultOf(d)
        self.assertEqual(self.counters.get("packets.delivered"), 1)
        self.assertEqual(node.in_flight, 0)

    def test_backend_given_up_at_stop_deadline(self):
        """
        At a stop's deadline a delivery still unanswered, overdue or not,
        is cancelled and counted as a timeout.
        """
        provider = ScriptedProvider(Deferred)
        node = self.make_node(provider=provider)
        overdue = node.receive_from_mix(self.final_packet())
        self.clock.advance(31)
        recent = node.receive_from_mix(self.final_packet())
        node.stop()
        drained = node.drain(self.clock.seconds() + 5)
        self.clock.advance(5)
        self.successResultOf(drained)
        self.failureResultOf(overdue, BackendTimeout)
        self.failureResultOf(recent, BackendTimeout)
        self.assertEqual(self.counters.get("packets.dropped", "backend_timeout"), 2)
        self.assertEqual(self.counters.get("backend.scripted.failed", "backend_timeout"), 2)

    def test_backend_crash_is_counted_and_logged(self):
        """
        A backend that raises something untyped has its error logged and
        counted, and the node carries on.
        """
        def explode():
            raise RuntimeError("backend bug")

        node = self.make_node(provider=ScriptedProvider(explode))
        self.failureResultOf(node.receive_from_mix(self.final_packet()), RuntimeError)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(self.counters.get("packets.dropped", "backend_error"), 1)
        self.assertEqual(self.counters.get("backend.scripted.failed", "backend_error"), 1)

    def test_garbage_is_typed(self):
        """
        Bytes that are no packet at all get a typed error and are counted.
        """
        node = self.make_node()
        for garbage in (b"", b"\x00" * 100, b"\xff" * 2413):
            f = self.failureResultOf(node.receive_from_mix(garbage))
            self.assertTrue(hasattr(f.value, "reason"), f)
        self.assertEqual(self.counters.get("packets.received", "mix"), 3)
        self.assertEqual(self.counters.get("packets.delivered"), 0)


class FromClientTests(NodeFixture, SynchronousTestCase):
    """
    Client packets take the Loopix route through this node or are relayed
    unchanged to a first-layer mix.
    """

    def test_forward_after_delay(self):
        """
        A forward hop is sent on to its next node no sooner than its delay.
        """
        node = self.make_node()
        self.successResultOf(node.send_from_client(PROVIDER_ADDRESS, self.loopix_packet(delay_ns=1_500_000_000)))
        self.clock.advance(1.499)
        self.assertEqual(self.sender.sent, [])
        self.clock.advance(0.002)
        [(address, packet)] = self.sender.sent
        self.assertEqual(address, MIX_ADDRESS)
        self.assertEqual(len(packet), 2413)
        self.assertEqual(self.counters.get("packets.forwarded"), 1)

    def test_sent_packet_unwraps_at_next_node(self):
        """
        What the node sends on is the packet the next node can process:
        its final hop names the original destination.
        """
        from nymprov.sphinx import FinalHop, process_packet

        node = self.make_node()
        self.successResultOf(node.send_from_client(PROVIDER_ADDRESS, self.loopix_packet()))
        self.clock.advance(0)
        [(_address, packet)] = self.sender.sent
        hop = process_packet(packet, self.mix_key)
        self.assertIsInstance(hop, FinalHop)
        self.assertEqual(hop.message(), b"through the mixnet")

    def test_delay_capped(self):
        """
        A delay above the configured maximum is cut to the maximum.
        """
        node = self.make_node(max_delay=2.0)
        self.successResultOf(node.send_from_client(PROVIDER_ADDRESS, self.loopix_packet(delay_ns=3600 * 10**9)))
        self.clock.advance(1.999)
        self.assertEqual(self.sender.sent, [])
        self.clock.advance(0.002)
        self.assertEqual(len(self.sender.sent), 1)

    def test_delay_reduced_by_time_waited(self):
        """
        Time the packet spent at this node before it was scheduled (here,
        waiting on the replay cache) counts against its delay.
        """
        replay = SlowReplayCache()
        node = self.make_node(replay=replay)
        d = node.send_from_client(PROVIDER_ADDRESS, self.loopix_packet(delay_ns=1_000_000_000))
        self.clock.advance(0.75)
        replay.pending[0].callback(True)
        self.successResultOf(d)
        self.clock.advance(0.249)
        self.assertEqual(self.sender.sent, [])
        self.clock.advance(0.002)
        self.assertEqual(len(self.sender.sent), 1)

    def test_nanosecond_delay_not_truncated(self):
        """
        A delay of a few nanoseconds is kept, not rounded to zero ahead of
        time: the call is scheduled with the exact fraction of a second.
        """
        node = self.make_node()
        self.successResultOf(node.send_from_client(PROVIDER_ADDRESS, self.loopix_packet(delay_ns=1_000_000_007)))
        [call] = self.clock.getDelayedCalls()
        self.assertAlmostEqual(call.getTime(), 1.000000007, places=12)

    def test_client_replay_refused(self):
        """
        A client cannot have the same packet forwarded twice.
        """
        node = self.make_node()
        packet = self.loopix_packet()
        self.successResultOf(node.send_from_client(PROVIDER_ADDRESS, packet))
        self.failureResultOf(node.send_from_client(PROVIDER_ADDRESS, packet), ReplayedPacket)
        self.clock.advance(1)
        self.assertEqual(len(self.sender.sent), 1)

    def test_final_hop_from_client_refused(self):
        """
        A client packet whose only hop is this node would skip the mixnet;
        it is refused.
        """
        node = self.make_node()
        failure = self.failureResultOf(node.send_from_client(PROVIDER_ADDRESS, self.final_packet()), PacketRefused)
        self.assertEqual(failure.value.reason, "route_refused")
        self.assertEqual(self.inbox(), [])

    def test_unknown_next_hop_refused(self):
        """
        The node forwards only to first-layer mix nodes it knows, so it
        cannot be used to send packets to arbitrary hosts.
        """
        node = self.make_node()
        packet = self.loopix_packet(next_address=OTHER_ADDRESS)
        failure = self.failureResultOf(node.send_from_client(PROVIDER_ADDRESS, packet), PacketRefused)
        self.assertEqual(failure.value.reason, "unknown_next_hop")

    def test_relay_to_first_layer(self):
        """
        A packet for a first-layer mix is relayed unchanged, at once.
        """
        node = self.make_node()
        packet = self.loopix_packet()
        self.successResultOf(node.send_from_client(MIX_ADDRESS, packet))
        self.assertEqual(self.sender.sent, [(MIX_ADDRESS, packet)])
        self.assertEqual(self.counters.get("packets.relayed"), 1)

    def test_relay_to_unknown_refused(self):
        """
        A packet for a first hop that is neither this node nor a known
        first-layer mix is refused.
        """
        node = self.make_node()
        failure = self.failureResultOf(node.send_from_client(OTHER_ADDRESS, self.loopix_packet()), PacketRefused)
        self.assertEqual(failure.value.reason, "unknown_first_hop")
        self.assertEqual(self.sender.sent, [])

    def test_relay_queue_full(self):
        """
        When the neighbour's queue is full the client is told the node is
        busy.
        """
        node = self.make_node(sender=RecordingSender(accept=False))
        failure = self.failureResultOf(node.send_from_client(MIX_ADDRESS, self.loopix_packet()), PacketRefused)
        self.assertEqual(failure.value.reason, "busy")

    def test_wrong_size_refused(self):
        """
        Bytes of no packet size are refused before any crypto.
        """
        node = self.make_node()
        failure = self.failureResultOf(node.send_from_client(MIX_ADDRESS, b"\x00" * 1000), PacketRefused)
        self.assertEqual(failure.value.reason, "bad_size")

    def test_stop_sends_delayed_packets(self):
        """
        Stopping the node sends every delayed packet at once, so nothing
        accepted is lost, and refuses new client packets.
        """
        node = self.make_node()
        self.successResultOf(node.send_from_client(PROVIDER_ADDRESS, self.loopix_packet(delay_ns=10**10)))
        self.assertEqual(node.stop(), 1)
        self.assertEqual(len(self.sender.sent), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        failure = self.failureResultOf(node.send_from_client(MIX_ADDRESS, self.loopix_packet()), PacketRefused)
        self.assertEqual(failure.value.reason, "busy")


class MixRoleTests(NodeFixture, SynchronousTestCase):
    """
    As a mix node, the core sends forward hops on to known nodes after
    their delay and refuses final hops.
    """

    def test_forward_hop_sent_after_delay(self):
        """
        A forward hop from the mix link is sent on to the next node, a
        provider known from the topology, no sooner than its delay.
        """
        node = self.make_node(role="mix")
        packet = self.loopix_packet(delay_ns=250_000_000, next_address=OTHER_PROVIDER)
        self.successResultOf(node.receive_from_mix(packet))
        self.clock.advance(0.249)
        self.assertEqual(self.sender.sent, [])
        self.clock.advance(0.002)
        [(address, _packet)] = self.sender.sent
        self.assertEqual(address, OTHER_PROVIDER)

    def test_final_hop_refused(self):
        """
        A mix node delivers nothing: a final hop is refused and counted.
        """
        node = self.make_node(role="mix")
        failure = self.failureResultOf(node.receive_from_mix(self.final_packet()), PacketRefused)
        self.assertEqual(failure.value.reason, "route_refused")
        self.assertEqual(self.inbox(), [])

    def test_unknown_next_node_refused(self):
        """
        A mix node does not send packets to addresses outside the topology.
        """
        node = self.make_node(role="mix")
        packet = self.loopix_packet(next_address=OTHER_ADDRESS)
        failure = self.failureResultOf(node.receive_from_mix(packet), PacketRefused)
        self.assertEqual(failure.value.reason, "unknown_next_hop")

    def test_replay_refused(self):
        """
        A mix node forwards one packet once.
        """
        node = self.make_node(role="mix")
        packet = self.loopix_packet(next_address=MIX_ADDRESS)
        self.successResultOf(node.receive_from_mix(packet))
        self.failureResultOf(node.receive_from_mix(packet), ReplayedPacket)
        self.clock.advance(1)
        self.assertEqual(len(self.sender.sent), 1)

    def test_unknown_role(self):
        """
        A role other than provider or mix is a programming error.
        """
        self.assertRaises(ValueError, self.make_node, role="gateway")


class HeldUnwrapper:
    """
    Stands in for an UnwrapPool: answers a batch (with the real
    unwrap_final, or a failure) only when the test says so.
    """

    def __init__(self):
        self.batches = []

    def unwrap_many(self, packets):
        d = Deferred()
        self.batches.append((packets, d))
        return d

    def answer(self, keypair):
        packets, d = self.batches.pop(0)
        d.callback([unwrap_final(packet, keypair) for packet in packets])


class BatchUnwrapTests(NodeFixture, SynchronousTestCase):
    """Mix packets unwrapped by an unwrapper (worker processes) in batches."""

    def test_batch_results(self):
        """
        Each packet of a batch gets its own fate once the batch is
        answered: delivered, replayed, refused.
        """
        unwrapper = HeldUnwrapper()
        node = self.make_node(unwrapper=unwrapper)
        first = self.final_packet(b"one")
        results = node.receive_many_from_mix([first, self.final_packet(b"two"), first, self.loopix_packet()])
        for d in results:
            self.assertNoResult(d)
        unwrapper.answer(self.keypair)
        self.successResultOf(results[0])
        self.successResultOf(results[1])
        self.failureResultOf(results[2], ReplayedPacket)
        self.assertEqual(self.failureResultOf(results[3], PacketRefused).value.reason, "route_refused")
        self.assertEqual(self.inbox(), [b"one", b"two"])
        self.assertEqual(self.counters.get("packets.delivered"), 2)

    def test_batch_failure(self):
        """
        A batch that fails (a bug: the pool never fails one) fails each of
        its packets, counted, and logged.
        """
        unwrapper = HeldUnwrapper()
        node = self.make_node(unwrapper=unwrapper)
        results = node.receive_many_from_mix([self.final_packet(), self.final_packet()])
        unwrapper.batches[0][1].errback(RuntimeError("boom"))
        for d in results:
            self.failureResultOf(d, RuntimeError)
        self.assertEqual(self.counters.get("packets.dropped", "unwrap_error"), 2)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(self.inbox(), [])
