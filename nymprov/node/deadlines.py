"""
Deliveries waiting on a backend, with a deadline that counts them overdue
but never cancels them (only a stop gives up on them).
"""

import itertools

from twisted.logger import Logger

#: Seconds between warnings about overdue deliveries.
OVERDUE_WARNING_INTERVAL = 60.0


class DeliveryDeadlines:
    """
    Tracks the backend's unanswered deliveries.  One timer serves them all
    instead of one per packet: they are kept in arrival order, so the
    overdue ones are at the front.

    A delivery past its deadline is counted (``backend.<name>.overdue``)
    and logged, at most once per :data:`OVERDUE_WARNING_INTERVAL`, and still
    awaited: a backend may already have done its work (a write that
    commits anyway), and only its answer says whether the message was taken
    and its SURB-ACK is due.  What bounds them is the mix link, which stops
    reading a connection with too many packets in flight.

    :param clock: an ``IReactorTime``.
    :param counters: a :class:`nymprov.metrics.Counters`.
    :param str backend: the backend's name, for counters and logs.
    :param float timeout: seconds before a delivery is overdue.
    """

    log = Logger()

    def __init__(self, clock, counters, backend, timeout):
        self._clock = clock
        self._counters = counters
        self._backend = backend
        self._timeout = timeout
        self._keys = itertools.count()
        self._waiting = {}  # key -> (deadline, Deferred), in arrival order
        self._overdue = {}  # key -> Deferred
        self._warned_at = None
        self._sweep_interval = max(timeout / 30.0, 0.001)
        self._sweep_call = None

    def track(self, d):
        """Start the deadline of delivery ``d``; :returns: its key for :meth:`settled`."""
        key = next(self._keys)
        self._waiting[key] = (self._clock.seconds() + self._timeout, d)
        if self._sweep_call is None:
            self._sweep_call = self._clock.callLater(self._sweep_interval, self._sweep)
        return key

    def settled(self, key):
        """
        Delivery ``key`` has its answer.

        :returns: ``True`` if it had been given up by :meth:`give_up` (its
            answer is then the cancellation).
        """
        given_up = False
        if self._waiting.pop(key, None) is None:
            given_up = self._overdue.pop(key, None) is None
        if not self._waiting and self._sweep_call is not None:
            self._sweep_call.cancel()
            self._sweep_call = None
        return given_up

    def give_up(self):
        """Cancel every delivery still unanswered (a stop's deadline)."""
        pending = [d for _deadline, d in self._waiting.values()] + list(self._overdue.values())
        self._waiting, self._overdue = {}, {}
        if self._sweep_call is not None:
            self._sweep_call.cancel()
            self._sweep_call = None
        for d in pending:
            d.cancel()

    def _sweep(self):
        self._sweep_call = None
        now = self._clock.seconds()
        overdue = []
        for key, (deadline, d) in self._waiting.items():
            if deadline > now:
                break
            overdue.append((key, d))
        for key, d in overdue:
            del self._waiting[key]
            self._overdue[key] = d
        if overdue:
            self._counters.incr(f"backend.{self._backend}.overdue", amount=len(overdue))
            if self._warned_at is None or now - self._warned_at >= OVERDUE_WARNING_INTERVAL:
                self._warned_at = now
                self.log.warn(
                    "backend {backend} has {count} deliveries unanswered after {timeout} s; still waiting",
                    backend=self._backend, count=len(self._overdue), timeout=self._timeout)
        if self._waiting:
            self._sweep_call = self._clock.callLater(self._sweep_interval, self._sweep)
