"""Forward hops waiting for their delay, and sending them on to the next node."""

import itertools

from nymprov.wire.frames import ROTATION_UNKNOWN

NANOSECONDS = 1_000_000_000


class DelayedHops:
    """
    Holds each forward hop for its delay (capped at ``max_delay``), then
    hands it to the sender; counts ``packets.scheduled`` and
    ``packets.forwarded``, or ``packets.dropped.queue_full`` when the next
    node's queue is full.

    :param clock: an ``IReactorTime``.
    :param sender: the ``IMixSender``.
    :param counters: a :class:`nymprov.metrics.Counters`.
    :param float max_delay: cap on a hop's delay, in seconds.
    """

    def __init__(self, clock, sender, counters, max_delay):
        self._clock = clock
        self._sender = sender
        self._counters = counters
        self._max_delay_ns = int(max_delay * NANOSECONDS)
        self._keys = itertools.count()
        self._waiting = {}  # key -> (IDelayedCall, next_address, packet, rotation)
        self._stopping = False

    def __len__(self):
        return len(self._waiting)

    def schedule(self, hop, arrived, rotation=ROTATION_UNKNOWN):
        """
        Send ``hop`` (a ``ForwardHop`` that arrived at reactor time
        ``arrived``) once its delay has passed since it arrived.
        """
        # The delay is kept in nanoseconds until here, capped, and reduced by
        # the time the packet already spent at this node.
        delay_ns = min(hop.delay_ns, self._max_delay_ns)
        remaining = delay_ns / NANOSECONDS - (self._clock.seconds() - arrived)
        self._counters.incr("packets.scheduled")
        if remaining <= 0.0 or self._stopping:
            # Due already, or the node is stopping (a hop that comes back
            # from an unwrap worker after send_all_now): no timer, sent now.
            self.send_on(hop.next_address, hop.packet, rotation)
            return
        key = next(self._keys)
        call = self._clock.callLater(remaining, self._due, key)
        self._waiting[key] = (call, hop.next_address, hop.packet, rotation)

    def _due(self, key):
        _call, address, packet, rotation = self._waiting.pop(key)
        self.send_on(address, packet, rotation)

    def send_on(self, address, packet, rotation=ROTATION_UNKNOWN):
        """Hand ``packet`` to the sender for ``address`` now, counted."""
        # The next node's key is of the same epoch, so of the same rotation;
        # passed only when known, so that simple senders keep two arguments.
        sent = (
            self._sender.send(address, packet, key_rotation=rotation)
            if rotation != ROTATION_UNKNOWN
            else self._sender.send(address, packet)
        )
        if sent:
            self._counters.incr("packets.forwarded")
        else:
            self._counters.incr("packets.dropped", "queue_full")

    def send_all_now(self):
        """
        Send every waiting hop now, giving up the rest of its delay (a stop),
        and every hop scheduled from now on at once.

        :returns: how many were sent early.
        """
        self._stopping = True
        pending = list(self._waiting.values())
        self._waiting.clear()
        for call, address, packet, rotation in pending:
            call.cancel()
            self.send_on(address, packet, rotation)
        return len(pending)
