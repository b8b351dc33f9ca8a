"""
The client's outgoing stream: one bounded queue of packets waiting to
leave, drained by a Poisson process, with loop and drop cover beside it
(Loopix's λ_P, λ_L and λ_D).

At each tick of the payload stream the head of the queue leaves, or a cover
packet when the queue is empty, so that what an observer of the client's
link sees (one packet of one size at exponential intervals) does not depend
on what the user does.  Packets are built when they leave, not when they are
queued: a route is fresh and an ACK timer starts at the moment of sending.
"""

import collections

from twisted.internet.defer import Deferred
from twisted.logger import Logger

#: Default rates, per second, after Nym's client (a message stream with a
#: mean gap of 20 ms and a loop stream of 200 ms); no drop stream.
DEFAULT_SEND_RATE = 50.0
DEFAULT_LOOP_RATE = 5.0
DEFAULT_DROP_RATE = 0.0
#: Seconds the streams may fall behind their schedule (a busy or paused
#: process) before they skip ticks instead of catching up.
MAX_BEHIND = 0.05
#: Packets the queue holds before ``send`` waits.
DEFAULT_QUEUE_CAPACITY = 1000


#: Pulls take this many times what the client's own packets bring back.
PULL_HEADROOM = 1.5


def pull_interval_keeping_up(pull_interval, pull_batch, send_rate, loop_rate, drop_rate,
                             cover="loop", shaped=True):
    """
    The pull interval, shortened if need be so that pulls of ``pull_batch``
    messages keep up with what the client's own streams bring back to its
    inbox: each packet's SURB-ACK, and each loop itself (a loop cover
    packet of the payload stream too).  A client that pulled less would
    see its real messages wait behind a backlog of its own cover that only
    grows, up to its provider's quota.

    :returns: seconds between pulls.
    """
    payload = send_rate if shaped else 0.0
    returning = payload * (2 if cover == "loop" else 1) + 2 * loop_rate + drop_rate
    if returning <= 0:
        return pull_interval
    return min(pull_interval, pull_batch / (PULL_HEADROOM * returning))


class QueueFull(Exception):
    """The outgoing queue has no room and the caller asked not to wait."""

    reason = "queue_full"


class MessageTooLong(ValueError):
    """A message needs more packets than the whole queue holds."""

    reason = "message_too_long"


class _Queued:
    """A packet waiting to leave: built by ``build()`` when its turn comes."""

    __slots__ = ("build", "queued_at")

    def __init__(self, build, queued_at):
        self.build = build  # () -> (first_hop, packet), or None when it has nothing to send
        self.queued_at = queued_at


class OutgoingStream:
    """
    One bounded queue and the Poisson processes that drain it.

    :param clock: an ``IReactorTime``.
    :param rng: a ``random.Random`` (the intervals are drawn from it).
    :param submit: ``(first_hop, packet) -> None``: hands a packet to the
        provider.
    :param make_cover: ``() -> (first_hop, packet)``: a cover packet for an
        empty tick of the payload stream.
    :param make_loop: ``() -> (first_hop, packet)``: a loop cover packet.
    :param make_drop: ``() -> (first_hop, packet)``: a drop cover packet.
    :param counters: a :class:`nymprov.metrics.Counters`.
    :param float send_rate: λ_P, ticks of the payload stream per second.
    :param float loop_rate: λ_L; 0 turns the loop stream off.
    :param float drop_rate: λ_D; 0 turns the drop stream off.
    :param int capacity: packets the queue holds.
    :param bool shaped: ``False`` sends every queued packet at once and no
        cover on the payload stream: observable, for tests and benchmarks.
    """

    log = Logger()

    def __init__(self, clock, rng, submit, make_cover, make_loop, make_drop, counters, *,
                 send_rate=DEFAULT_SEND_RATE, loop_rate=DEFAULT_LOOP_RATE,
                 drop_rate=DEFAULT_DROP_RATE, capacity=DEFAULT_QUEUE_CAPACITY, shaped=True):
        if shaped and not send_rate > 0:
            raise ValueError("a shaped stream needs a send_rate above 0")
        if loop_rate < 0 or drop_rate < 0:
            raise ValueError("loop_rate and drop_rate must not be negative")
        if capacity < 1:
            raise ValueError("the queue must hold at least one packet")
        self._clock = clock
        self._rng = rng
        self._submit = submit
        self._streams = {
            "payload": (send_rate if shaped else 0.0, self._payload_tick),
            "loop": (loop_rate, lambda: self._send_cover(make_loop, "loop")),
            "drop": (drop_rate, lambda: self._send_cover(make_drop, "drop")),
        }
        self._make_cover = make_cover
        self._counters = counters
        self.send_rate = send_rate
        self.capacity = capacity
        self.shaped = shaped
        self._queue = collections.deque()
        self._waiting = collections.deque()  # (packets needed, Deferred)
        self._call = None
        self._next_at = None  # when the next tick is due, on the process's own timeline
        self._running = False
        self.longest_queue = 0
        self.last_queue_delay = 0.0
        self._delay_total = 0.0
        self._delay_count = 0

    # -- queue -------------------------------------------------------------

    def __len__(self):
        return len(self._queue)

    @property
    def room(self):
        """Packets the queue takes before it is full."""
        return max(0, self.capacity - len(self._queue))

    def reserve(self, count, wait=True):
        """
        Wait until the queue has room for ``count`` packets.

        :param bool wait: ``False`` fails at once with :class:`QueueFull`
            when there is no room now.
        :returns: a Deferred firing once there is room; the caller then
            :meth:`put` s its packets without giving up the reactor.
        :raises MessageTooLong: if ``count`` exceeds the whole capacity.
        """
        if count > self.capacity:
            raise MessageTooLong(f"{count} packets; the queue holds {self.capacity}")
        d = Deferred()
        if not self._waiting and count <= self.room:
            d.callback(None)
        elif not wait:
            self._counters.incr("queue.refused")
            d.errback(QueueFull(f"{len(self._queue)} of {self.capacity} packets queued"))
        else:
            # First come, first served: a large message is not starved by
            # small ones that would fit sooner.
            self._waiting.append((count, d))
            self._counters.incr("queue.waited")
        return d

    def put(self, build, front=False):
        """
        Queue a packet, built by ``build()`` when it leaves.  ``front``
        puts it first (retransmissions: their message was accepted long ago).
        """
        item = _Queued(build, self._clock.seconds())
        if front:
            self._queue.appendleft(item)
        else:
            self._queue.append(item)
        self.longest_queue = max(self.longest_queue, len(self._queue))
        if not self.shaped:
            self.flush_now()

    def flush_now(self):
        """Send every queued packet at once (an unshaped stream does so always)."""
        while self._queue:
            self._send_head()

    def _send_head(self):
        """Send the head of the queue; ``False`` if it had nothing to send."""
        item = self._queue.popleft()
        delay = self._clock.seconds() - item.queued_at
        self.last_queue_delay = delay
        self._delay_total += delay
        self._delay_count += 1
        built = item.build()
        self._wake_waiters()
        if built is None:
            return False
        self._counters.incr("stream.sent", "real")
        self._submit(*built)
        return True

    def _wake_waiters(self):
        while self._waiting and self._waiting[0][0] <= self.room:
            _, d = self._waiting.popleft()
            d.callback(None)

    # -- the Poisson processes --------------------------------------------

    def start(self):
        """Start every stream whose rate is above 0 (once)."""
        if self._running:
            return
        self._running = True
        self._next_at = self._clock.seconds()
        if not self.shaped:
            self.log.warn("the client sends unshaped: an observer of its link sees when and how much it sends")
            self.flush_now()
        self._schedule()

    def stop(self):
        """Stop the streams; queued packets stay queued, waiters keep waiting."""
        self._running = False
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    @property
    def total_rate(self):
        """Packets per second on the link: the sum of the running streams' rates."""
        return sum(rate for rate, _ in self._streams.values())

    def _schedule(self):
        # The streams run as one Poisson process of the summed rate whose
        # every tick goes to one stream with probability rate/total: the
        # same thing in law as independent processes, but with one timer,
        # so a stall of the reactor delays one packet instead of making
        # several timers fire back to back (a burst an observer could see).
        #
        # Each tick is due an exponential interval after the previous one
        # was *due*, not after it ran: time spent building packets, or a
        # busier reactor while the user sends, then does not slow the
        # stream down (an observer would see the rate drop).  A stream that
        # fell more than MAX_BEHIND behind gives up the missed ticks rather
        # than sending them in a burst.
        total = self.total_rate
        if total > 0:
            now = self._clock.seconds()
            if now - self._next_at > MAX_BEHIND:
                self._counters.incr("stream.ticks_skipped")
                self._next_at = now
            self._next_at += self._rng.expovariate(total)
            self._call = self._clock.callLater(max(0.0, self._next_at - now), self._tick)

    def _tick(self):
        self._schedule()
        active = [(name, rate, tick) for name, (rate, tick) in self._streams.items() if rate > 0]
        pick = self._rng.random() * self.total_rate
        for name, rate, tick in active:  # the last one if rounding leaves pick >= 0
            pick -= rate
            if pick < 0:
                break
        try:
            tick()
        except Exception:
            self.log.failure("the {name} stream failed to send a packet", name=name)

    def _payload_tick(self):
        while self._queue:
            if self._send_head():
                return
            # A queued packet with nothing to send (a reply out of SURBs)
            # gives its turn to the next one.
        self._send_cover(self._make_cover, "cover")

    def _send_cover(self, make, kind):
        self._counters.incr("stream.sent", kind)
        self._submit(*make())

    # -- stats -------------------------------------------------------------

    def stats(self):
        """:returns: a dict of the queue's figures (lengths in packets, delays in seconds)."""
        mean = self._delay_total / self._delay_count if self._delay_count else 0.0
        return {
            "shaped": self.shaped,
            "send_rate": self.send_rate,
            "queue_length": len(self._queue),
            "queue_capacity": self.capacity,
            "queue_longest": self.longest_queue,
            "queue_delay_last": self.last_queue_delay,
            "queue_delay_mean": mean,
            "waiting_senders": len(self._waiting),
        }
