"""
Group commit for the PostgreSQL store: appends and new replay tags gathered
on the reactor thread and written many to a transaction.
"""

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from nymprov.storage.postgresql import queries

#: Batch transactions at most in flight at once: one commits while the next
#: is written, so the database never idles between them.
MAX_IN_FLIGHT = 2


class GroupCommit:
    """
    The pending batch and its pacing.

    :param reactor: gets ``callLater`` and ``seconds``.
    :param limits: the store's ``StoreLimits`` (batch size, delay, quotas).
    :param run: ``run(operation, *args)`` runs ``operation(connection,
        *args)`` on a database thread and returns a Deferred.
    :ivar in_flight: Deferreds of the batches being written.
    :ivar transactions: how many batch transactions have committed.
    """

    log = Logger()

    def __init__(self, reactor, limits, run):
        self._reactor = reactor
        self._limits = limits
        self._run = run
        self._messages = []
        self._waiting = []
        self._tags = {}  # tag -> Deferred of whether it is new
        self._tags_in_flight = set()
        self._flush_call = None
        self._last_flush = 0.0
        self.in_flight = []
        self.transactions = 0

    @property
    def pending(self):
        """Whether anything waits for a batch."""
        return bool(self._messages or self._tags)

    def append(self, address, received, body):
        """
        :returns: a Deferred firing once the message is committed, or
            failing with why it was refused.
        """
        d = Deferred()
        self._messages.append((address, received, body))
        self._waiting.append(d)
        self._schedule()
        return d

    def record_tag(self, tag):
        """
        :returns: a Deferred firing with whether ``tag`` is new to every
            process, once that is decided and committed.
        """
        if tag in self._tags or tag in self._tags_in_flight:
            # A copy of a packet this process is deciding on already: of
            # the two, at most the first may pass.
            return succeed(False)
        d = self._tags[tag] = Deferred()
        self._schedule()
        return d

    def _schedule(self):
        if len(self._messages) >= self._limits.commit_batch:
            if len(self.in_flight) < MAX_IN_FLIGHT:
                self.flush()
        elif self._flush_call is None and not self.in_flight:
            self._flush_call = self._reactor.callLater(self._limits.commit_delay, self.flush)

    def flush(self):
        """
        Hand the next batch of appends, and every pending tag, to a
        database thread as one transaction.
        """
        if self._flush_call is not None:
            if self._flush_call.active():
                self._flush_call.cancel()
            self._flush_call = None
        if not self.pending:
            return
        self._last_flush = self._reactor.seconds()
        size = self._limits.commit_batch
        messages, self._messages = self._messages[:size], self._messages[size:]
        waiting, self._waiting = self._waiting[:size], self._waiting[size:]
        tags, self._tags = self._tags, {}
        self._tags_in_flight.update(tags)
        d = self._run(queries.write_batch, messages, list(tags), self._limits)
        self.in_flight.append(d)
        d.addBoth(self._written, d, messages, waiting, tags)

    def _written(self, result, d, messages, waiting, tags):
        self.in_flight.remove(d)
        self._tags_in_flight.difference_update(tags)
        if isinstance(result, Failure):
            self.log.failure("writing a batch of {count} messages failed", result, count=len(messages))
            # Nothing of it was committed: every waiter learns so, and a
            # tag that was not recorded refuses its packet, never lets a
            # replay through.
            for waiter in waiting + list(tags.values()):
                waiter.errback(result.value)
        else:
            outcomes, new_tags = result
            self.transactions += 1
            for waiter, outcome in zip(waiting, outcomes):
                if outcome is None:
                    waiter.callback(None)
                else:
                    waiter.errback(outcome)
            for tag, waiter in tags.items():
                waiter.callback(tag in new_tags)
        self._pace()
        return None

    def _pace(self):
        if self.in_flight or not self.pending:
            return
        # At most one commit per commit_delay unless a batch is full, as in
        # the SQLite store: fewer, larger transactions.
        wait = self._last_flush + self._limits.commit_delay - self._reactor.seconds()
        if wait <= 0 or len(self._messages) >= self._limits.commit_batch:
            self.flush()
        elif self._flush_call is None:
            self._flush_call = self._reactor.callLater(wait, self.flush)

    def drain(self):
        """
        Hand everything pending to the database now.

        :returns: the Deferreds of every batch in flight.
        """
        while self.pending:
            self.flush()
        return list(self.in_flight)
