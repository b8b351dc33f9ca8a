"""
The node core: what happens to one Sphinx packet.

A packet from the mix link must be a final hop here; it is unwrapped,
checked against the replay cache, taken out of its envelope and handed to
the backend; its SURB-ACK is sent only once the backend has taken it.  A packet from a
client either names this node as its first hop (the Loopix route: it must
be a forward hop, which is sent on after the delay its header asks for) or a
first-layer mix node (the Nym route: it is relayed unchanged).  Every fate
is counted by reason; payloads never reach a log.
"""

from twisted.internet.defer import (
    CancelledError,
    Deferred,
    fail,
    succeed,
)
from twisted.logger import Logger
from twisted.python.failure import Failure

from nymprov.errors import BackendTimeout, DeliveryError, PacketRefused
from nymprov.interfaces import IMixSender, IProvider, IReplayCache, ITopology
from nymprov.node.deadlines import DeliveryDeadlines
from nymprov.node.delays import DelayedHops
from nymprov.node.epochkeys import StaticKeys
from nymprov.node.inflight import InFlight
from nymprov.node.unwrap import FORWARD, unwrap_any, unwrap_final
from nymprov.net.ratelimit import TokenBucketLimiter
from nymprov.sphinx.errors import BadMAC
from nymprov.wire.frames import ROTATION_UNKNOWN
from nymprov.wire.envelope import BadAckHop, MalformedEnvelope, open_final
from nymprov.sphinx import FinalHop, ForwardHop, PacketSize, ReplayedPacket, SphinxError

#: Seconds a backend may take to accept a message before it counts as overdue.
DEFAULT_DELIVER_TIMEOUT = 30.0

#: Most forward hops waiting for their delay at once; beyond it clients are
#: told the node is busy, so a flood cannot grow memory without bound.
DEFAULT_MAX_DELAYED = 100_000


class NodeCore:
    """
    Unwraps packets and decides their fate.

    :param keypair: the node's Sphinx ``KeyPair``.
    :param replay_cache: an ``IReplayCache``.
    :param provider: the ``IProvider`` backend for final hops.
    :param mix_sender: the ``IMixSender`` for packets leaving this node.
    :param topology: an ``ITopology`` naming the first-layer mix nodes.
    :param clock: an ``IReactorTime``.
    :param counters: a :class:`nymprov.metrics.Counters`.
    :param float max_delay: cap on a forward hop's delay, in seconds.
    :param float deliver_timeout: seconds after which a delivery the
        backend has not answered is counted and logged as overdue; it is
        still awaited (only a stop's deadline gives up on it).
    :param ack_rate: ``(per second, burst)``: SURB-ACKs relayed for the
        messages of one destination; the rest are dropped and counted
        (``acks.dropped.rate_limited``).  ``None``: no budget.
    :param str role: ``"provider"`` (packets from the mix link must be final
        hops here) or ``"mix"`` (they must be forward hops to a known node,
        sent on after their delay).
    :param unwrapper: an :class:`nymprov.node.pool.UnwrapPool` that
        unwraps batches of mix packets in worker processes, or ``None`` to
        unwrap them on the reactor thread.
    :param keys: the key choice per packet: an
        :class:`nymprov.node.epochkeys.RotatingKeys` for a node with epochs
        (``keypair`` and ``replay_cache`` are then unused); by default
        ``keypair`` with ``replay_cache`` for every packet.
    """

    log = Logger()

    def __init__(
        self,
        keypair,
        replay_cache,
        provider,
        mix_sender,
        topology,
        clock,
        counters,
        *,
        max_delay=30.0,
        deliver_timeout=DEFAULT_DELIVER_TIMEOUT,
        max_delayed=DEFAULT_MAX_DELAYED,
        ack_rate=None,
        role="provider",
        unwrapper=None,
        keys=None,
    ):
        if role not in ("provider", "mix"):
            raise ValueError(f"unknown role {role!r}")
        assert keys is not None or IReplayCache.providedBy(replay_cache), replay_cache
        assert IProvider.providedBy(provider), provider
        assert IMixSender.providedBy(mix_sender), mix_sender
        assert ITopology.providedBy(topology), topology
        self._keypair = keypair
        self._replay = replay_cache
        self._provider = provider
        self._sender = mix_sender
        self._topology = topology
        self._clock = clock
        self._counters = counters
        self._max_delayed = max_delayed
        self._unwrapping = 0  # forward hops in the unwrap workers, counted as delayed
        self._ack_limiter = None
        if ack_rate is not None:
            rate, burst = ack_rate
            self._ack_limiter = TokenBucketLimiter(clock, rate, burst)
        self._delayed = DelayedHops(clock, mix_sender, counters, max_delay)
        self._own_addresses = set()
        self._deliveries = DeliveryDeadlines(clock, counters, provider.name, deliver_timeout)
        self._stopped = False
        self._role = role
        self._unwrapper = unwrapper
        self._key_choice = StaticKeys(keypair, replay_cache) if keys is None else keys
        #: The node's own loops (:class:`nymprov.node.loops.NodeLoops`),
        #: which see every final hop first; ``None`` when it sends none.
        self.loops = None
        self._in_flight = InFlight(clock)

    # -- configuration -----------------------------------------------------

    def add_own_address(self, address):
        """
        Know ``address`` (a 32-byte node address) as one of this node's own,
        so that a client naming it as first hop takes the Loopix route.
        """
        self._own_addresses.add(address)

    @property
    def own_addresses(self):
        """The node addresses this node answers to."""
        return frozenset(self._own_addresses)

    @property
    def stopping(self):
        """Whether :meth:`stop` was called: client packets are refused."""
        return self._stopped

    @property
    def delayed_count(self):
        """How many forward hops are waiting for their delay."""
        return len(self._delayed)

    # -- packets from the mix link -----------------------------------------

    def receive_from_mix(self, packet):
        """
        Handle a packet that arrived over the mix link.

        :returns: a Deferred that fires with ``None`` once the backend took
            responsibility for the message (a provider) or the packet was
            scheduled for its next node (a mix), or fails with the typed
            reason (already counted).
        """
        [d] = self.receive_many_from_mix([packet])
        return d

    def receive_many_from_mix(self, packets, rotations=None):
        """
        Handle packets that arrived together over the mix link, in order.

        ``rotations`` are their frames' key-rotation bytes (all 0, "not
        said", if ``None``): which of this node's keys each was built for.

        :returns: one Deferred per packet, as :meth:`receive_from_mix`.
        """
        self._counters.incr("packets.received", "mix", len(packets))
        if rotations is None:
            rotations = [ROTATION_UNKNOWN] * len(packets)
        return self._in_flight.track(self._receive_many(packets, rotations))

    def _receive_many(self, packets, rotations):
        if self._role == "mix":
            # A mix sends forward hops on to any node of the mixnet.
            return self._forward_hops(packets, rotations, self._topology.is_known_node, "final hop at a mix node")
        if not self._key_choice.static:
            # Workers hold one key; with epochs, unwrap here.
            results = []
            for packet, rotation in zip(packets, rotations):
                outcome, replay, _ = self._unwrap(packet, rotation, unwrap_final)
                results.append(self._after_unwrap(outcome, replay))
            return results
        if self._unwrapper is None:
            return [self._after_unwrap(unwrap_final(packet, self._keypair)) for packet in packets]
        results = [Deferred() for _ in packets]
        self._unwrapper.unwrap_many(packets).addCallbacks(
            self._after_unwrap_many, self._unwrap_failed, callbackArgs=(results,), errbackArgs=(results,)
        )
        return results

    def _after_unwrap_many(self, outcomes, results):
        for outcome, result in zip(outcomes, results):
            self._after_unwrap(outcome).chainDeferred(result)

    def _unwrap_failed(self, failure, results):
        # The pool unwraps on the reactor thread when a worker fails, so
        # this is a bug; each packet still gets an answer.
        self.log.failure("unwrapping a batch failed", failure)
        self._counters.incr("packets.dropped", "unwrap_error", len(results))
        for result in results:
            result.errback(failure)

    def _unwrap(self, packet, rotation, unwrap):
        """
        Unwrap ``packet`` with the key its frame names (one try), or, for a
        frame that did not say, the current key and then the other usable
        one if the MAC failed.

        :returns: ``(outcome, replay cache, rotation to send on)``; the
            outcome is the error (returned) if it failed.
        """
        try:
            choices = self._key_choice.choose(rotation)
        except PacketRefused as e:
            return e, None, ROTATION_UNKNOWN
        for index, (keypair, replay, rotation_out) in enumerate(choices):
            outcome = unwrap(packet, keypair)
            if not isinstance(outcome, BadMAC) or index + 1 == len(choices):
                return outcome, replay, rotation_out
        return PacketRefused("retired_key", "no usable key"), None, ROTATION_UNKNOWN

    def _after_unwrap(self, outcome, replay=None):
        if isinstance(outcome, Exception):
            return self._refuse(outcome)
        d = (replay or self._replay).check_and_record(outcome.replay_tag)
        d.addCallbacks(self._deliver_if_new, self._replay_check_failed, callbackArgs=(outcome,))
        return d

    def _deliver_if_new(self, is_new, unwrapped):
        if not is_new:
            return self._refuse(ReplayedPacket("replayed packet"))
        if self._own_loop(unwrapped.destination, unwrapped.surb_id):
            return None
        try:
            message, ack = open_final(unwrapped.destination, unwrapped.surb_id, unwrapped.message)
            # Checked before the backend sees the message, so that a
            # message whose ACK would go astray changes nothing.
            if ack is not None and not self._topology.is_first_layer(ack[0]):
                raise BadAckHop("SURB-ACK first hop is not a first-layer mix")
        except MalformedEnvelope as e:
            return self._refuse(e)
        try:
            d = self._provider.deliver(message)
        except Exception:
            d = fail()
        if d.called:
            # The backend answered at once: no deadline to keep, no timer.
            return d.addBoth(self._delivery_done, None, ack, unwrapped.destination)
        key = self._deliveries.track(d)
        d.addBoth(self._delivery_done, key, ack, unwrapped.destination)
        return d

    def _delivery_done(self, result, key, ack, destination):
        # key is None for a delivery that never had a deadline.
        given_up = key is not None and self._deliveries.settled(key)
        if not isinstance(result, Failure):
            self._counters.incr("packets.delivered")
            if ack is not None:
                self._send_ack(*ack, destination)
            return None
        # Counted by backend too, so that an operator can tell which
        # backend fails or hangs, and why.
        failures = f"backend.{self._provider.name}.failed"
        if given_up and result.check(CancelledError):
            self._counters.incr(failures, BackendTimeout.reason)
            return self._refuse(BackendTimeout())
        if result.check(DeliveryError):
            self._counters.incr(failures, result.value.reason)
            return self._refuse(result.value)
        self._counters.incr(failures, "backend_error")
        self._counters.incr("packets.dropped", "backend_error")
        self.log.failure("backend {backend} failed", result, backend=self._provider.name)
        return result

    def _send_ack(self, first_hop, packet, destination):
        # Only here, after the backend took the message: an ACK always
        # means "taken".  A refused ACK costs the sender a retransmission,
        # which its recipient drops as a duplicate.
        if self._ack_limiter is not None and not self._ack_limiter.allow(destination):
            # Anyone who can reach an inbox chooses the ACKs relayed for it:
            # without a budget one sender could use the provider as a
            # packet source at its full ingest rate.
            self._counters.incr("acks.dropped", "rate_limited")
        elif self._sender.send(first_hop, packet):
            self._counters.incr("acks.sent")
        else:
            self._counters.incr("acks.dropped", "queue_full")

    # -- packets from clients ----------------------------------------------

    def send_from_client(self, first_hop, packet):
        """
        Accept a client's packet for the mixnet.

        :param bytes first_hop: the 32-byte address of the packet's first hop.
        :param bytes packet: a whole Sphinx packet.
        :returns: a Deferred that fires with ``None`` once the packet is
            accepted (scheduled or queued for its next node), or fails with
            ``PacketRefused`` or a ``SphinxError`` (already counted).
        """
        self._counters.incr("packets.received", "client")
        [d] = self._in_flight.track([self._send_from_client(first_hop, packet)])
        return d

    def _send_from_client(self, first_hop, packet):
        if not PacketSize.is_packet_length(len(packet)):
            return self._refuse(PacketRefused("bad_size", f"{len(packet)} bytes"))
        if self._stopped:
            return self._refuse(PacketRefused("busy", "node is stopping"))
        if first_hop in self._own_addresses:
            # The Loopix route: this provider is the client's first hop and
            # sends the packet on to the first layer; a client packet ending
            # here would bypass the mixnet.
            [d] = self._forward_hops([packet], [ROTATION_UNKNOWN], self._topology.is_first_layer,
                                     "final hop from a client")
            return d
        if not self._topology.is_first_layer(first_hop):
            return self._refuse(PacketRefused("unknown_first_hop"))
        if not self._sender.send(first_hop, packet):
            return self._refuse(PacketRefused("busy", "neighbour queue full"))
        self._counters.incr("packets.relayed")
        return succeed(None)

    def _forward_hops(self, packets, rotations, next_allowed, ending_here):
        """
        Unwrap packets that must be forward hops to a node for which
        ``next_allowed(address)`` holds, and schedule each for its delay:
        in the unwrap workers when there are some and one key, else here.

        :param str ending_here: what a final hop here would mean, for the
            refusal's detail.
        :returns: one Deferred per packet.
        """
        if self._unwrapper is None or not self._key_choice.static:
            return [self._forward_hop(packet, next_allowed, ending_here, rotation)
                    for packet, rotation in zip(packets, rotations)]
        arrived = self._clock.seconds()
        room = 0 if self._stopped else max(0, self._max_delayed - len(self._delayed) - self._unwrapping)
        admitted = packets[:room]
        waiting = [Deferred() for _ in admitted]
        results = waiting + [self._refuse(PacketRefused("busy", "too many delayed packets"))
                             for _ in packets[room:]]
        if admitted:
            try:
                unwrapped = self._unwrapper.unwrap_many(admitted, FORWARD)
            except Exception:
                unwrapped = fail()
            self._unwrapping += len(admitted)
            unwrapped.addCallbacks(
                self._after_forward_unwraps, self._forward_unwraps_failed,
                callbackArgs=(waiting, next_allowed, ending_here, arrived), errbackArgs=(waiting,))
        return results

    def _after_forward_unwraps(self, hops, waiting, next_allowed, ending_here, arrived):
        self._unwrapping -= len(waiting)
        replay = self._replay
        for hop, result in zip(hops, waiting):
            outcome = self._after_forward_unwrap(hop, replay, ROTATION_UNKNOWN, next_allowed, ending_here, arrived)
            if outcome is None:
                result.callback(None)
            else:
                outcome.chainDeferred(result)

    def _forward_unwraps_failed(self, failure, waiting):
        self._unwrapping -= len(waiting)
        self._unwrap_failed(failure, waiting)

    def _busy(self):
        return self._stopped or len(self._delayed) + self._unwrapping >= self._max_delayed

    def _forward_hop(self, packet, next_allowed, ending_here, rotation=ROTATION_UNKNOWN):
        """One forward hop unwrapped here (see :meth:`_forward_hops`)."""
        arrived = self._clock.seconds()
        if self._busy():
            return self._refuse(PacketRefused("busy", "too many delayed packets"))
        hop, replay, rotation_out = self._unwrap(packet, rotation, unwrap_any)
        outcome = self._after_forward_unwrap(hop, replay, rotation_out, next_allowed, ending_here, arrived)
        return succeed(None) if outcome is None else outcome

    def _after_forward_unwrap(self, hop, replay, rotation_out, next_allowed, ending_here, arrived):
        """:returns: ``None`` if the hop was scheduled at once, else a Deferred of its fate."""
        try:
            if isinstance(hop, Exception):
                raise hop
            if isinstance(hop, FinalHop) and self._role == "mix" and self._own_loop(hop.destination, hop.surb_id):
                # A mix's own loop, back home: its id is known only here
                # and taken once, so a replay is refused below.
                return None
            if not isinstance(hop, ForwardHop):
                raise PacketRefused("route_refused", ending_here)
            if not next_allowed(hop.next_address):
                raise PacketRefused("unknown_next_hop")
        except (SphinxError, PacketRefused) as e:
            return self._refuse(e)
        d = replay.check_and_record(hop.replay_tag)
        if d.called and not d.paused and type(d.result) is bool:
            # Answered at once (the replay filter, the usual case): no
            # callbacks to run, for the reactor's sake at a mix node's rates.
            return self._schedule_if_new(d.result, hop, arrived, rotation_out)
        d.addCallbacks(self._schedule_if_new, self._replay_check_failed,
                       callbackArgs=(hop, arrived, rotation_out))
        return d

    def _replay_check_failed(self, failure):
        # Without a verdict the packet may be a replay: it is dropped,
        # counted, and logged once a minute at most (a cache that is away
        # fails every packet).
        now = self._clock.seconds()
        if now - getattr(self, "_replay_logged_at", -60.0) >= 60.0:
            self._replay_logged_at = now
            self.log.failure("replay cache failed; packets dropped", failure)
        return self._refuse(PacketRefused("replay_cache_error", failure.getErrorMessage()))

    def _schedule_if_new(self, is_new, hop, arrived, rotation=ROTATION_UNKNOWN):
        if not is_new:
            return self._refuse(ReplayedPacket("replayed packet"))
        self._delayed.schedule(hop, arrived, rotation)
        return None

    def _own_loop(self, destination, surb_id):
        """Whether a final hop is one of this node's loops (counted as delivered to itself)."""
        if self.loops is not None and self.loops.take(destination, surb_id):
            self._counters.incr("packets.delivered", "own_loop")
            return True
        return False

    # -- life cycle ----------------------------------------------------------

    def stop(self):
        """
        Refuse new client packets and send every delayed packet now, so that
        nothing accepted is lost at shutdown (their remaining delay is given
        up, which is the lesser harm).

        :returns: the number of packets sent early.
        """
        self._stopped = True
        return self._delayed.send_all_now()

    @property
    def in_flight(self):
        """Packets handed in whose fate is not decided yet."""
        return self._in_flight.count

    def drain(self, deadline):
        """
        Wait until every packet handed in has its fate; at ``deadline``
        (reactor time) give up on deliveries the backend still holds
        (cancelled, so counted as timed out) and stop waiting.

        :returns: a Deferred that fires once none is in flight, or at the
            deadline.
        """
        return self._in_flight.drain(deadline, self._give_up)

    def _give_up(self):
        self.log.warn("{count} packets still in flight at the stop deadline", count=self._in_flight.count)
        self._deliveries.give_up()

    # -- helpers -------------------------------------------------------------

    def _refuse(self, error):
        reason = getattr(error, "reason", "error")
        self._counters.incr("packets.dropped", reason)
        self.log.debug("dropped a packet: {reason}", reason=reason)
        return fail(error)
