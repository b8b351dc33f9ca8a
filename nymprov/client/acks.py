"""
Fragments in flight until their SURB-ACKs come back: each sending's ACK
id, its timer, the round-trip estimate, and when a late ACK means a lost
packet rather than a queued one.
"""

from twisted.internet.defer import Deferred

from nymprov.net.roundtrip import RetransmissionTimeout

#: Seconds an ACK is waited for at most, however slow the measured round
#: trips (or eight times the least timeout, when that is longer).
MAX_ACK_TIMEOUT = 60.0
#: Timeouts a sending may wait through, while nothing sent after it was
#: ACKed either, before it is sent again anyway.
MAX_ACK_HOLDS = 3


class Outgoing:
    """One fragment in flight until its ACK comes back."""

    def __init__(self, fragment_bytes, seal_key, hint, make_packet):
        self.fragment_bytes = fragment_bytes
        self.seal_key = seal_key
        self.hint = hint
        self.make_packet = make_packet  # envelope -> (first_hop, packet), or None when out of routes
        self.attempts = 0
        self.sent_at = None  # of the latest sending
        self.holds = 0  # timeouts of the latest sending that waited on instead
        self.ack_ids = []  # one per sending: a late ACK of any of them will do
        self.timer = None
        self.done = Deferred()


class Acknowledgements:
    """
    The ACKs a client awaits.

    A sending's timeout is at least ``ack_timeout`` and longer when the
    measured round trips need it (RFC 6298's estimator, at most
    :data:`MAX_ACK_TIMEOUT` or eight times ``ack_timeout``, whichever is
    longer).  Each sending has its own ACK id, so every
    ACK is a clean sample, and an ACK of an earlier sending still completes
    its fragment.  When a timeout passes while nothing sent after that
    sending has come back either, the ACKs are queued somewhere (a loaded
    network, the client's own pulls), not lost: the sending waits up to
    :data:`MAX_ACK_HOLDS` more timeouts before ``resend(outgoing)``.

    :param clock: an ``IReactorTime``.
    :param counters: a :class:`nymprov.metrics.Counters`.
    :param float ack_timeout: the least timeout, in seconds.
    :param resend: ``(Outgoing) -> None``: queue the fragment to go again.
    """

    def __init__(self, clock, counters, ack_timeout, resend):
        self._clock = clock
        self._counters = counters
        self._resend = resend
        self._estimate = RetransmissionTimeout(ack_timeout, ack_timeout, max(8 * ack_timeout, MAX_ACK_TIMEOUT))
        self._pending = {}  # ack id -> (Outgoing, seconds when sent)
        self._last_sent_at = None  # of the newest sending
        self._newest_acked_sent_at = None  # the send time of the newest sending ACKed

    @property
    def timeout(self):
        """Seconds a sending now waits for its ACK."""
        return self._estimate.timeout

    def __len__(self):
        """ACKs awaited: one per sending not yet acknowledged or given up."""
        return len(self._pending)

    def sent(self, outgoing, ack_id):
        """``outgoing`` left now with ``ack_id``: start its timer."""
        now = self._clock.seconds()
        self._pending[ack_id] = (outgoing, now)
        self._last_sent_at = outgoing.sent_at = now
        outgoing.holds = 0
        outgoing.ack_ids.append(ack_id)
        outgoing.timer = self._clock.callLater(self.timeout, self._timed_out, outgoing)

    def received(self, ack_id):
        """
        Take an ACK from the inbox.

        :returns: the :class:`Outgoing` it completes, or ``None`` for an
            unknown one (a cover loop's, or one of a fragment another
            sending already completed).
        """
        entry = self._pending.pop(ack_id, None)
        if entry is None:
            self._counters.incr("acks.received", "unknown")
            return None
        outgoing, sent_at = entry
        self._estimate.sample(self._clock.seconds() - sent_at)
        if self._newest_acked_sent_at is None or sent_at > self._newest_acked_sent_at:
            self._newest_acked_sent_at = sent_at
        self._counters.incr("acks.received", "pending")
        if ack_id != outgoing.ack_ids[-1]:
            # The fragment was sent again in vain: its timeout was short.
            self._counters.incr("acks.late")
        self.forget(outgoing)
        return outgoing

    def forget(self, outgoing):
        """Stop awaiting every sending of ``outgoing``."""
        for ack_id in outgoing.ack_ids:
            self._pending.pop(ack_id, None)
        if outgoing.timer is not None and outgoing.timer.active():
            outgoing.timer.cancel()
        outgoing.timer = None

    def clear(self):
        """Stop every timer and await nothing (the client stops)."""
        for outgoing, _ in list(self._pending.values()):
            self.forget(outgoing)

    def deadlines(self):
        """:returns: the times the awaited fragments' timers fire, in sending order."""
        fragments = {id(outgoing): outgoing for outgoing, _ in self._pending.values()}
        return [outgoing.timer.getTime() for outgoing in fragments.values() if outgoing.timer is not None]

    def _timed_out(self, outgoing):
        outgoing.timer = None
        if outgoing.done.called:
            # Its send was cancelled: nothing awaits these ACKs any more.
            self.forget(outgoing)
            return
        sent_later = self._last_sent_at > outgoing.sent_at
        acked_later = self._newest_acked_sent_at is not None and self._newest_acked_sent_at > outgoing.sent_at
        if sent_later and not acked_later and outgoing.holds < MAX_ACK_HOLDS:
            # Sending again now would only add to the queue, and a network
            # pushed past its capacity would collapse so.
            outgoing.holds += 1
            self._counters.incr("acks.held")
            outgoing.timer = self._clock.callLater(self.timeout, self._timed_out, outgoing)
            return
        # Its earlier ACK ids stay awaited: the packet may only be slow.
        self._resend(outgoing)
