"""
The forward backend: posts each payload to one configured URL, at least
once, keeping it in a durable queue until the target answers 2xx.

A message is accepted (``deliver`` fires) once it is committed to the
queue's SQLite file; it is then posted, and retried with exponential
back-off until a 2xx answer, across restarts.  If the request carried a
SURB, the target's status goes back through it.
"""

import heapq
import os
import sqlite3
import struct
from io import BytesIO

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, fail, inlineCallbacks
from twisted.internet.protocol import Protocol
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool
from twisted.web.http_headers import Headers
from zope.interface import implementer

from nymprov.backends.surbreply import (
    NO_REPLY_KEY,
    MalformedRequest,
    ServiceBusy,
    ServiceRequest,
    decode_fragment,
    decode_request,
    open_message,
    send_ack,
    send_reply,
)
from nymprov.errors import DeliveryError, StoreError
from nymprov.interfaces import IProvider
from nymprov.sphinx import SURB

QUEUE_FILE = "forward.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS forward_queue (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    payload BLOB NOT NULL,
    request_id BLOB NOT NULL,
    reply_key BLOB NOT NULL,
    surb BLOB,                      -- where the status goes back, if anywhere
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL
)
"""

_STATUS = struct.Struct(">H")


def encode_status(status, phrase=b""):
    """:returns: the status reply: the HTTP status and its phrase."""
    return _STATUS.pack(status) + phrase[:200]


def decode_status(data):
    """
    :returns: ``(status, phrase)``.
    :raises ValueError: if ``data`` is too short.
    """
    if len(data) < _STATUS.size:
        raise ValueError("status reply too short")
    return _STATUS.unpack_from(data)[0], bytes(data[_STATUS.size :])


def backoff(attempts, first, cap):
    """:returns: seconds to wait after the ``attempts``-th failure."""
    return min(cap, first * 2 ** min(attempts - 1, 62))


class _Discard(Protocol):
    """Reads a response body to its end and throws it away."""

    def __init__(self, finished):
        self._finished = finished

    def connectionLost(self, reason):
        self._finished.callback(None)


@implementer(IProvider)
class ForwardProvider(Service):
    """
    The durable forwarding queue.

    :param sender: the ``IMixSender`` for status replies.
    :param topology: the ``ITopology`` SURB first hops are checked in.
    :param reactor: the reactor (time, threads, TCP).
    :param str url: where payloads are posted.
    :param str path: the queue's SQLite file.
    """

    log = Logger()
    name = "forward"

    def __init__(self, sender, topology, reactor, *, url, path, content_type=b"application/octet-stream",
                 timeout=10.0, retry_first=1.0, retry_max=300.0, max_queue=10000, max_parallel=4,
                 agent=None):
        self.sender = sender
        self.topology = topology
        self._reactor = reactor
        self._url = url.encode("ascii")
        self._path = path
        self._content_type = content_type
        self._timeout = timeout
        self._retry_first = retry_first
        self._retry_max = retry_max
        self._max_queue = max_queue
        self._max_parallel = max_parallel
        self._http_pool = HTTPConnectionPool(reactor, persistent=False)
        self._agent = agent or Agent(reactor, connectTimeout=timeout, pool=self._http_pool)
        self._threads = ThreadPool(minthreads=1, maxthreads=1, name="nymprov-forward")
        self._db = None
        self._due = {}  # id -> time of the next attempt, for rows not in flight
        self._in_flight = {}  # id -> Deferred of the attempt
        self._timer = None
        self._open = False

    # -- the database thread -------------------------------------------------

    def _run(self, f, *args):
        return deferToThreadPool(self._reactor, self._threads, f, *args)

    def _connect(self):
        if not os.path.exists(self._path):
            os.close(os.open(self._path, os.O_CREAT | os.O_WRONLY, 0o600))
        db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute(_SCHEMA)
        self._db = db
        return db.execute("SELECT id, next_attempt FROM forward_queue").fetchall()

    def _insert(self, payload, request_id, reply_key, surb, now):
        with self._db:
            return self._db.execute(
                "INSERT INTO forward_queue (payload, request_id, reply_key, surb, next_attempt)"
                " VALUES (?, ?, ?, ?, ?)",
                (payload, request_id, reply_key, surb, now),
            ).lastrowid

    def _load(self, row_id):
        return self._db.execute(
            "SELECT payload, request_id, reply_key, surb, attempts FROM forward_queue WHERE id = ?",
            (row_id,),
        ).fetchone()

    def _delete(self, row_id):
        with self._db:
            self._db.execute("DELETE FROM forward_queue WHERE id = ?", (row_id,))

    def _postpone(self, row_id, attempts, when):
        with self._db:
            self._db.execute(
                "UPDATE forward_queue SET attempts = ?, next_attempt = ? WHERE id = ?",
                (attempts, when, row_id),
            )

    def _disconnect(self):
        if self._db is not None:
            self._db.close()
            self._db = None

    # -- life cycle ------------------------------------------------------------

    @inlineCallbacks
    def startService(self):
        """Open the queue and resume posting what it holds."""
        Service.startService(self)
        self._threads.start()
        rows = yield self._run(self._connect)
        self._open = True
        self._due = dict(rows)
        if rows:
            self.log.info("forward: {count} payloads waiting from before", count=len(rows))
        self._pump()

    @inlineCallbacks
    def stopService(self):
        """Stop posting; unfinished payloads stay queued for the next start."""
        Service.stopService(self)
        self._open = False
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        for d in list(self._in_flight.values()):
            d.cancel()
        yield self._http_pool.closeCachedConnections()
        try:
            yield self._run(self._disconnect)
        finally:
            self._threads.stop()

    @property
    def queued_count(self):
        """Payloads not yet accepted by the target."""
        return len(self._due) + len(self._in_flight)

    # -- IProvider ---------------------------------------------------------------

    def deliver(self, destination, surb_id, message):
        """IProvider API: fires once the payload is committed to the queue."""
        try:
            fragment, ack = open_message(message, self.topology)
            request = self._decode(fragment)
            if not self._open:
                raise ServiceBusy("the queue is not open")
            if self.queued_count >= self._max_queue:
                raise ServiceBusy("the queue is full")
        except DeliveryError as e:
            return fail(e)
        surb = request.surbs[0].to_bytes() if request.surbs else None
        now = self._reactor.seconds()
        d = self._run(self._insert, request.body, request.request_id, request.reply_key, surb, now)

        def committed(row_id):
            self._due[row_id] = now
            self._pump()
            send_ack(self.sender, ack)

        def failed(failure):
            self.log.failure("forward: cannot queue a payload", failure)
            raise StoreError("the forward queue cannot be written")

        return d.addCallbacks(committed, failed)

    def _decode(self, message):
        request_id, _index, count, data = decode_fragment(message)
        # One packet per payload: a payload split over packets could be
        # lost half-accepted, which at-least-once forbids.
        if count != 1:
            raise MalformedRequest("a forwarded payload must fit one packet")
        return decode_request(request_id, data, self.topology)

    # -- posting -------------------------------------------------------------------

    def _pump(self):
        if not self._open:
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
        row = yield self._run(self._load, row_id)
        if row is None:
            return
        payload, request_id, reply_key, surb, attempts = row
        headers = Headers({b"content-type": [self._content_type]})
        d = self._agent.request(b"POST", self._url, headers, FileBodyProducer(BytesIO(payload)))
        d.addTimeout(self._timeout, self._reactor)
        try:
            response = yield d
            finished = Deferred()
            response.deliverBody(_Discard(finished))
            yield finished.addTimeout(self._timeout, self._reactor)
        except CancelledError:
            raise  # stopping: the row stays as it was, due at the next start
        except Exception as e:
            yield self._retry(row_id, attempts + 1, type(e).__name__)
            return
        if not 200 <= response.code < 300:
            yield self._retry(row_id, attempts + 1, f"status {response.code}")
            return
        yield self._run(self._delete, row_id)
        self.log.debug("forward: posted after {attempts} failures", attempts=attempts)
        if surb is not None:
            self._send_status(request_id, reply_key, surb, response)

    def _retry(self, row_id, attempts, why):
        when = self._reactor.seconds() + backoff(attempts, self._retry_first, self._retry_max)
        self.log.info("forward: attempt {attempts} failed ({why}); retrying later", attempts=attempts, why=why)
        d = self._run(self._postpone, row_id, attempts, when)
        return d.addCallback(lambda _: self._due.__setitem__(row_id, when) if self._open else None)

    def _send_status(self, request_id, reply_key, surb, response):
        try:
            request = ServiceRequest(request_id, [SURB.from_bytes(surb)], reply_key or NO_REPLY_KEY, b"")
            send_reply(self.sender, request, encode_status(response.code, response.phrase))
        except Exception:
            # The payload is delivered; a status that cannot be sent only
            # costs the requester its confirmation.
            self.log.failure("forward: cannot send the status back")

    def _attempt_done(self, outcome, row_id):
        self._in_flight.pop(row_id, None)
        if isinstance(outcome, Failure) and not outcome.check(CancelledError) and self._open:
            # A database failure: the row stays for the next start; in this
            # run it is tried again after the longest back-off.
            self.log.failure("forward: attempt failed", outcome)
            self._due[row_id] = self._reactor.seconds() + self._retry_max
        self._pump()
        return None
