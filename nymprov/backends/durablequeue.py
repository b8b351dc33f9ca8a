"""
At-least-once delivery onward: a durable SQLite queue of payloads, each
with the reply block it came with, attempted until done, with
exponential back-off across restarts; and :class:`QueuedBackend`, the
``IProvider`` half that accepts a message only once it is committed and
answers through the stored reply block when the work is done.

Used by ``forward`` and ``broadcast``.
"""

import heapq
import os
import sqlite3

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, fail, inlineCallbacks, maybeDeferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from nymprov.backends.surbreply import (
    NO_REPLY_KEY,
    MalformedServiceRequest,
    ServiceBusy,
    ServiceRequest,
    decode_fragment,
    decode_service_request,
    send_reply,
)
from nymprov.errors import DeliveryError, StoreError
from nymprov.sphinx import SURB


def backoff(attempts, first, cap):
    """:returns: seconds to wait after the ``attempts``-th failure."""
    return min(cap, first * 2 ** min(attempts - 1, 62))


class Retry(Exception):
    """Raised by an attempt that failed for now; ``str()`` says why (no payload)."""


class QueuedItem:
    """One queued payload, as an attempt sees it."""

    __slots__ = ("row_id", "payload", "request_id", "reply_key", "surb", "attempts")

    def __init__(self, row_id, payload, request_id, reply_key, surb, attempts):
        self.row_id = row_id
        self.payload = payload
        self.request_id = request_id
        self.reply_key = reply_key
        self.surb = surb
        self.attempts = attempts


class DurableQueue:
    """
    Payloads in a SQLite file (mode 0600, WAL, synchronous FULL, one
    database thread), attempted at most ``max_parallel`` at a time, each
    when it is due.

    ``attempt(item)`` returns a Deferred: its result is handed to
    ``done(item, result)`` after the row is deleted; ``Retry`` postpones
    the row by the back-off; cancellation (at stop) leaves it as it was.

    :param str table: the queue's table (its columns are fixed).
    :param schema: more ``CREATE`` statements for the owner's own tables.
    :param bool secure_delete: overwrite what is deleted with zeros, so
        that done payloads (signed transactions, say) do not linger in
        the file's free space; set either way, as SQLite builds differ in
        their default.
    """

    log = Logger()

    def __init__(self, reactor, path, table, attempt, done, *, name, retry_first=1.0, retry_max=300.0,
                 max_queue=10000, max_parallel=4, schema=(), secure_delete=True):
        self._reactor = reactor
        self._path = path
        self._table = table
        self._attempt_item = attempt
        self._done = done
        self._name = name
        self._retry_first = retry_first
        self._retry_max = retry_max
        self._max_queue = max_queue
        self._max_parallel = max_parallel
        self._schema = [
            f"""CREATE TABLE IF NOT EXISTS {table} (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                payload BLOB NOT NULL,
                request_id BLOB NOT NULL,
                reply_key BLOB NOT NULL,
                surb BLOB,                      -- where the answer goes back, if anywhere
                attempts INTEGER NOT NULL DEFAULT 0,
                next_attempt REAL NOT NULL
            )""",
            *schema,
        ]
        self._secure_delete = secure_delete
        self._threads = ThreadPool(minthreads=1, maxthreads=1, name=f"nymprov-{name}")
        self._db = None
        self._due = {}  # id -> time of the next attempt, for rows not in flight
        self._in_flight = {}  # id -> Deferred of the attempt
        self._timer = None
        self.is_open = False

    # -- the database thread -------------------------------------------------

    def run(self, f, *args):
        """Run ``f(db, *args)`` in the database thread; returns a Deferred."""
        return deferToThreadPool(self._reactor, self._threads, lambda: f(self._db, *args))

    def _connect(self, _db):
        if not os.path.exists(self._path):
            os.close(os.open(self._path, os.O_CREAT | os.O_WRONLY, 0o600))
        db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute(f"PRAGMA secure_delete={'ON' if self._secure_delete else 'OFF'}")
        for statement in self._schema:
            db.execute(statement)
        self._db = db
        return db.execute(f"SELECT id, next_attempt FROM {self._table}").fetchall()

    def _insert(self, db, admit, row, when):
        with db:
            if admit is not None and not admit(db):
                return None
            return db.execute(
                f"INSERT INTO {self._table} (payload, request_id, reply_key, surb, next_attempt)"
                " VALUES (?, ?, ?, ?, ?)",
                (*row, when),
            ).lastrowid

    def _load(self, db, row_id):
        return db.execute(
            f"SELECT payload, request_id, reply_key, surb, attempts FROM {self._table} WHERE id = ?",
            (row_id,),
        ).fetchone()

    def _delete(self, db, row_id):
        with db:
            db.execute(f"DELETE FROM {self._table} WHERE id = ?", (row_id,))

    def _postpone(self, db, row_id, attempts, when):
        with db:
            db.execute(f"UPDATE {self._table} SET attempts = ?, next_attempt = ? WHERE id = ?",
                       (attempts, when, row_id))

    def _disconnect(self, db):
        if db is not None:
            db.close()
            self._db = None

    # -- life cycle ------------------------------------------------------------

    @inlineCallbacks
    def start(self):
        """Open the queue and resume what it holds."""
        self._threads.start()
        rows = yield self.run(self._connect)
        self.is_open = True
        self._due = dict(rows)
        if rows:
            self.log.info("{name}: {count} payloads waiting from before", name=self._name, count=len(rows))
        self._pump()

    @inlineCallbacks
    def stop(self):
        """Stop attempting; unfinished payloads stay queued for the next start."""
        self.is_open = False
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        for d in list(self._in_flight.values()):
            d.cancel()
        try:
            yield self.run(self._disconnect)
        finally:
            self._threads.stop()

    @property
    def queued_count(self):
        """Payloads not yet done."""
        return len(self._due) + len(self._in_flight)

    def check_room(self):
        """:raises ServiceBusy: if the queue is closed or full."""
        if not self.is_open:
            raise ServiceBusy("the queue is not open")
        if self.queued_count >= self._max_queue:
            raise ServiceBusy("the queue is full")

    def add(self, request, delay=0.0, admit=None):
        """
        Commit ``request``'s body with its first SURB, due in ``delay``
        seconds.

        :param admit: ``admit(db)``, run in the same transaction first; if
            it returns false nothing is queued.
        :returns: a Deferred firing with the row id (``None``: not
            admitted) once committed; ``StoreError`` if it cannot be.
        """
        surb = request.surbs[0].to_bytes() if request.surbs else None
        when = self._reactor.seconds() + delay
        row = (request.body, request.request_id, request.reply_key, surb)
        d = self.run(self._insert, admit, row, when)

        def committed(row_id):
            if row_id is not None:
                self._due[row_id] = when
                self._pump()
            return row_id

        def failed(failure):
            self.log.failure("{name}: cannot queue a payload", failure, name=self._name)
            raise StoreError(f"the {self._name} queue cannot be written")

        return d.addCallbacks(committed, failed)

    # -- attempts -------------------------------------------------------------------

    def _pump(self):
        if not self.is_open:
            return
        now = self._reactor.seconds()
        free = max(0, self._max_parallel - len(self._in_flight))
        # Only the earliest few are needed: no sort of a queue that can
        # hold max_queue payloads, on every delivery.
        for row_id, when in heapq.nsmallest(free, self._due.items(), key=lambda item: item[1]):
            if when > now:
                break
            del self._due[row_id]
            d = self._attempt(row_id)
            self._in_flight[row_id] = d
            d.addBoth(self._attempt_done, row_id)
        self._set_timer()

    def _set_timer(self):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._due and len(self._in_flight) < self._max_parallel:
            wait = max(0.0, min(self._due.values()) - self._reactor.seconds())
            self._timer = self._reactor.callLater(wait, self._pump)

    @inlineCallbacks
    def _attempt(self, row_id):
        row = yield self.run(self._load, row_id)
        if row is None:
            return
        item = QueuedItem(row_id, *row)
        try:
            result = yield maybeDeferred(self._attempt_item, item)
        except Retry as e:
            yield self._retry(row_id, item.attempts + 1, str(e))
            return
        yield self.run(self._delete, row_id)
        try:
            self._done(item, result)
        except Exception:
            # The work is done; what follows it (an answer) must not
            # make it be done again.
            self.log.failure("{name}: after a finished payload", name=self._name)

    def _retry(self, row_id, attempts, why):
        when = self._reactor.seconds() + backoff(attempts, self._retry_first, self._retry_max)
        self.log.info("{name}: attempt {attempts} failed ({why}); retrying later",
                      name=self._name, attempts=attempts, why=why)
        d = self.run(self._postpone, row_id, attempts, when)
        return d.addCallback(lambda _: self._due.__setitem__(row_id, when) if self.is_open else None)

    def _attempt_done(self, outcome, row_id):
        self._in_flight.pop(row_id, None)
        if isinstance(outcome, Failure) and not outcome.check(CancelledError) and self.is_open:
            # A database failure or a bug: the row stays for the next
            # start; in this run it is tried again after the longest back-off.
            self.log.failure("{name}: attempt failed", outcome, name=self._name)
            self._due[row_id] = self._reactor.seconds() + self._retry_max
        self._pump()
        return None


def decode_one_packet_request(fragment, topology):
    """
    :returns: the :class:`ServiceRequest` in a one-fragment message.
    :raises MalformedServiceRequest: for anything else.  One packet per
        payload: a payload split over packets could be lost half-accepted,
        which at-least-once forbids.
    """
    fragment = decode_fragment(fragment)
    if fragment.count != 1:
        raise MalformedServiceRequest("a queued payload must fit one packet")
    return decode_service_request(fragment.message_id, fragment.chunk, topology)


def send_stored_reply(sender, item, body):
    """Send ``body`` back through ``item``'s stored SURB, sealed to its reply key."""
    request = ServiceRequest(item.request_id, [SURB.from_bytes(item.surb)], item.reply_key or NO_REPLY_KEY, b"")
    return send_reply(sender, request, body)


class QueuedBackend(Service):
    """
    The ``IProvider`` half of a queue-backed backend: a message is taken
    (``deliver`` fires, then the node sends its SURB-ACK) once
    :meth:`accept` has committed it; bad input fails with a
    ``DeliveryError`` and changes nothing.

    Subclasses set ``self.queue`` (a :class:`DurableQueue` whose ``done``
    is :meth:`answer`), may override :meth:`accept`, and implement the
    queue's attempt.
    """

    log = Logger()
    queue = None

    def __init__(self, sender, topology, reactor):
        self.sender = sender
        self.topology = topology
        self._reactor = reactor

    def startService(self):
        """Open the queue and resume what it holds."""
        Service.startService(self)
        return self.queue.start()

    def stopService(self):
        """Stop; unfinished payloads stay queued for the next start."""
        Service.stopService(self)
        return self.queue.stop()

    @property
    def queued_count(self):
        """Payloads not yet done."""
        return self.queue.queued_count

    def deliver(self, message):
        """IProvider API: fires once the payload is committed (or needs no commit)."""
        try:
            request = decode_one_packet_request(message.body, self.topology)
        except DeliveryError as e:
            return fail(e)
        return maybeDeferred(self.accept, request)

    def accept(self, request):
        """
        Take ``request``: by default, queue it now.

        :returns: a Deferred that fires once it is committed.
        :raises DeliveryError: to refuse it, changing nothing.
        """
        self.queue.check_room()
        return self.queue.add(request)

    def answer(self, item, body):
        """Send ``body`` (``None``: nothing) back through ``item``'s SURB, if it has one."""
        if body is None or item.surb is None:
            return
        try:
            refused = send_stored_reply(self.sender, item, body)
        except Exception:
            # The payload is done; an answer that cannot be sent only
            # costs the requester its confirmation.
            self.log.failure("{name}: cannot send the answer back", name=self.name)
            return
        if refused:
            self.log.info("{name}: answer refused by a full queue", name=self.name)
