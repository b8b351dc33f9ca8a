"""Packets handed to the node whose fate is not decided yet, so a stop can wait for them."""

from twisted.internet.defer import Deferred, succeed


class InFlight:
    """
    Counts the Deferreds of packets being handled and tells a stop when
    none is left, or when its deadline comes first.

    :param clock: an ``IReactorTime``.
    """

    def __init__(self, clock):
        self._clock = clock
        self.count = 0
        self._idle_waiters = []

    def track(self, results):
        """Count each of ``results`` (Deferreds) until it fires; :returns: them."""
        for d in results:
            # A Deferred waiting on another (a delivery waiting on the
            # store) is "called" but paused: it has no result yet.
            if not d.called or d.paused:
                self.count += 1
                d.addBoth(self._settled)
        return results

    def _settled(self, result):
        self.count -= 1
        if not self.count and self._idle_waiters:
            waiters, self._idle_waiters = self._idle_waiters, []
            for d in waiters:
                d.callback(None)
        return result

    def drain(self, deadline, give_up):
        """
        :param deadline: reactor time after which the wait ends anyway,
            calling ``give_up()`` first.
        :returns: a Deferred that fires once none is in flight, or at
            ``deadline``.
        """
        if not self.count:
            return succeed(None)
        d = Deferred()
        self._idle_waiters.append(d)

        def expired():
            give_up()
            if d in self._idle_waiters:
                self._idle_waiters.remove(d)
                d.callback(None)

        timer = self._clock.callLater(max(0.0, deadline - self._clock.seconds()), expired)
        return d.addBoth(lambda result: (timer.active() and timer.cancel(), result)[1])
