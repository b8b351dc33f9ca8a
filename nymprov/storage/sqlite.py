"""
The durable inbox store and replay cache, in one SQLite file.
"""

import functools
import hmac
import itertools
import os
import sqlite3

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from nymprov.errors import StoreError, UnknownLease
from nymprov.interfaces import IInboxStore, IReplayCache
from nymprov.storage import schema
from nymprov.storage.bloom import TAG_SIZE, TagFilter
from nymprov.storage.leases import check_lease_id, check_lease_request, new_lease_id
from nymprov.storage.limits import StoreLimits
from nymprov.storage.quota import InboxQuotas, check_bytes, check_time

SYNCHRONOUS_MODES = ("FULL", "NORMAL", "EXTRA")
DEFAULT_FILTER_BYTES = 4 * 1024 * 1024

#: Rows per multi-row INSERT, largest first.  ``executemany`` steps once per
#: row, and the sqlite3 module releases and retakes the GIL around every
#: step, so each row would cost the reactor thread two GIL hand-offs; one
#: statement of many rows takes the GIL back once.  Only powers of two: the
#: sqlite3 module caches a compiled statement per distinct SQL text, and one
#: per batch size (up to 128 rows each) grew resident memory by about
#: 10 MiB over 200,000 packets before every size had been seen.
_ROWS_PER_INSERT = (128, 64, 32, 16, 8, 4, 2, 1)


# Unbounded: the keys are a few statements times a few row counts.
@functools.lru_cache(maxsize=None)
def _insert_sql(insert, width, rows):
    row = "(" + ", ".join("?" * width) + ")"
    return f"{insert} VALUES " + ", ".join([row] * rows)


def _insert_rows(db, insert, width, rows):
    start = 0
    for size in _ROWS_PER_INSERT:
        while len(rows) - start >= size:
            chunk = rows[start:start + size]
            db.execute(_insert_sql(insert, width, size), list(itertools.chain.from_iterable(chunk)))
            start += size
_FREE_MESSAGES = (
    "SELECT m.id, m.body FROM messages AS m LEFT JOIN leases AS l ON l.message_id = m.id"
    " WHERE m.address = ? AND (l.message_id IS NULL OR l.expires <= ?)"
    " ORDER BY m.id LIMIT ?"
)

# Store states; operations are accepted only while OPEN.
NEW, STARTING, OPEN, CLOSING, CLOSED = "new", "starting", "open", "closing", "closed"


@implementer(IInboxStore, IReplayCache)
class SQLiteStore(Service):
    """
    Clients, messages and replay tags in one SQLite file in WAL mode.

    All SQL runs on one dedicated thread, so the connection never crosses
    threads and the reactor never waits on ``fsync``.  Methods whose names
    start with ``_`` and that touch ``self._db`` run on that thread and take
    every input as an argument.  Appends and new replay tags are grouped:
    one transaction writes a whole batch, and each append's Deferred fires
    only once its transaction has committed.

    What the hot path asks (is this client registered, is its inbox full,
    was this tag seen) is answered from memory: per-client usage, and a
    fixed-size Bloom filter of replay tags backed by the ``replay_tags``
    table.

    :ivar transactions: how many write transactions have committed; for
        tests and benchmarks.
    """

    name = "sqlite-store"
    log = Logger()

    def __init__(
        self,
        reactor,
        path,
        limits=StoreLimits(),
        replay_key_id=b"",
        synchronous="FULL",
        replay_filter_bytes=DEFAULT_FILTER_BYTES,
    ):
        if synchronous not in SYNCHRONOUS_MODES:
            raise ValueError(f"synchronous must be one of {SYNCHRONOUS_MODES}")
        check_bytes("replay_key_id", replay_key_id)
        self._reactor = reactor
        self._path = path
        self._limits = limits
        self._replay_key_id = replay_key_id
        self._synchronous = synchronous
        self._pool = ThreadPool(minthreads=1, maxthreads=1, name="nymprov-db")
        self._db = None  # lives on the DB thread only
        self._state = NEW
        self._close_waiters = []
        self._shutdown_trigger = None
        self._start_waiters = []
        self._quotas = InboxQuotas(limits)
        self._forgetting = {}
        self._filter = TagFilter(replay_filter_bytes)
        # Replay tags recorded but not yet committed, and tags whose
        # "maybe seen" is being checked against the table.
        self._unsaved_tags = set()
        self._tag_lookups = set()
        # The next batch, gathering while the previous one is written.
        self._pending_messages = []
        self._pending_deferreds = []
        self._pending_tags = []
        self._flush_call = None
        self._in_flight = 0
        self._last_flush = 0.0
        self.transactions = 0

    # -- life cycle ----------------------------------------------------

    def startService(self):
        Service.startService(self)
        self.start().addErrback(lambda failure: self.log.failure("cannot open the store", failure))

    def stopService(self):
        Service.stopService(self)
        return self.close()

    def _run(self, operation, *args):
        """
        Run ``operation`` on the DB thread; SQLite's own errors come back
        as ``StoreError``.
        """
        d = deferToThreadPool(self._reactor, self._pool, operation, *args)
        return d.addErrback(_as_store_error)

    def start(self):
        """IInboxStore API"""
        if self._state != NEW:
            return fail(StoreError(f"store is {self._state}"))
        self._state = STARTING
        self._pool.start()
        # Even when not run as a service, a reactor shutdown commits what
        # is pending and stops the DB thread (which would otherwise keep
        # the process alive).
        self._shutdown_trigger = self._reactor.addSystemEventTrigger("before", "shutdown", self.close)
        d = self._run(self._open, self._path, self._synchronous, self._replay_key_id, self._filter)
        d.addCallbacks(self._opened, self._open_failed)
        return d

    def _opened(self, usage):
        self._state = OPEN
        for address, count, size in usage:
            self._quotas.add_client(address, count, size)
        self.log.info(
            "opened store with {clients} clients, {messages} messages, {tags} replay tags",
            clients=len(self._quotas),
            messages=self._quotas.messages,
            tags=self._filter.count,
        )
        self._notify_started()

    def _notify_started(self):
        waiters, self._start_waiters = self._start_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def _open_failed(self, failure):
        self._state = CLOSED
        self._pool.stop()
        self._remove_shutdown_trigger()
        self._notify_started()
        if failure.check(StoreError):
            return failure
        raise StoreError(f"cannot open the store: {failure.getErrorMessage()}")

    def _open(self, path, synchronous, replay_key_id, tag_filter):
        try:
            if path != ":memory:":
                # Messages and token hashes are private: create the file
                # 0600; SQLite gives its -wal and -shm files the same mode.
                os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
            db = sqlite3.connect(path, isolation_level=None)
        except (OSError, sqlite3.Error) as error:
            raise StoreError(f"cannot open the store: {error}") from error
        try:
            # The version check comes first: a file we do not understand
            # must not even have its journal mode changed.
            schema.prepare(db)
            db.execute("PRAGMA journal_mode = WAL")
            db.execute(f"PRAGMA synchronous = {synchronous}")
            self._db = db
            self._check_replay_key(replay_key_id)
            for (tag,) in db.execute("SELECT tag FROM replay_tags"):
                if type(tag) is bytes and len(tag) == TAG_SIZE:
                    tag_filter.add(tag)
            return db.execute(
                "SELECT c.address, count(m.id), coalesce(sum(length(m.body)), 0)"
                " FROM clients AS c LEFT JOIN messages AS m ON m.address = c.address"
                " GROUP BY c.address"
            ).fetchall()
        except BaseException as error:
            self._db = None
            db.close()
            if isinstance(error, sqlite3.Error):
                raise StoreError(f"cannot open the store: {error}") from error
            raise

    def _check_replay_key(self, replay_key_id):
        row = self._db.execute("SELECT value FROM meta WHERE key = 'replay_key_id'").fetchone()
        if row is not None and row[0] == replay_key_id:
            return
        # Tags belong to one Sphinx key: a new key starts with none.
        with self._transaction():
            self._db.execute("DELETE FROM replay_tags")
            self._db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('replay_key_id', ?)",
                (replay_key_id,),
            )
        if row is not None:
            self.log.info("replay key changed: stored replay tags cleared")

    def close(self):
        """IInboxStore API"""
        if self._state in (NEW, CLOSED):
            self._state = CLOSED
            return succeed(None)
        if self._state == STARTING:
            # Let the opening finish first; the DB thread is busy with it.
            waiter = Deferred()
            self._start_waiters.append(waiter)
            return waiter.addCallback(lambda _: self.close())
        waiter = Deferred()
        self._close_waiters.append(waiter)
        if self._state == CLOSING:
            return waiter
        self._state = CLOSING
        while self._pending_messages or self._pending_tags:
            self._flush()

        def closed(result):
            self._pool.stop()
            self._remove_shutdown_trigger()
            self._state = CLOSED
            self.log.info("store closed")
            waiters, self._close_waiters = self._close_waiters, []
            for d in waiters:
                if isinstance(result, Failure):
                    d.errback(StoreError(f"close failed: {result.getErrorMessage()}"))
                else:
                    d.callback(None)

        self._run(self._close).addBoth(closed)
        return waiter

    def _remove_shutdown_trigger(self):
        if self._shutdown_trigger is not None:
            try:
                self._reactor.removeSystemEventTrigger(self._shutdown_trigger)
            except ValueError:
                pass  # already run: this close is the shutdown's own
            self._shutdown_trigger = None

    def _close(self):
        db, self._db = self._db, None
        if db is not None:
            db.close()

    def _refuse(self):
        """
        :returns: a failed Deferred if the store does not take requests now.
        """
        if self._state != OPEN:
            return fail(StoreError(f"store is {self._state}"))
        return None

    def _transaction(self):
        return _Transaction(self)

    # -- group commit ----------------------------------------------------

    def _schedule_flush(self):
        if len(self._pending_messages) >= self._limits.commit_batch:
            # A full batch goes at once; a second one may wait in the
            # pool's queue so the DB thread never idles between them.
            if self._in_flight < 2:
                self._flush()
        elif self._flush_call is None and self._in_flight == 0:
            self._flush_call = self._reactor.callLater(self._limits.commit_delay, self._flush)

    def _flush(self):
        """
        Hand the next batch of appends, and every new replay tag, to the DB
        thread as one transaction.
        """
        if self._flush_call is not None:
            if self._flush_call.active():
                self._flush_call.cancel()
            self._flush_call = None
        if not (self._pending_messages or self._pending_tags):
            return
        self._last_flush = self._reactor.seconds()
        size = self._limits.commit_batch
        messages, self._pending_messages = self._pending_messages[:size], self._pending_messages[size:]
        waiting, self._pending_deferreds = self._pending_deferreds[:size], self._pending_deferreds[size:]
        tags, self._pending_tags = self._pending_tags, []
        self._in_flight += 1
        d = self._run(self._write_batch, messages, tags)
        d.addBoth(self._batch_written, messages, waiting, tags)

    def _write_batch(self, messages, tags):
        with self._transaction():
            _insert_rows(self._db, "INSERT INTO messages (address, received, body)", 3, messages)
            _insert_rows(self._db, "INSERT OR IGNORE INTO replay_tags (tag)", 1, [(tag,) for tag in tags])

    def _batch_written(self, result, messages, waiting, tags):
        self._in_flight -= 1
        if isinstance(result, Failure):
            self.log.failure("writing a batch of {count} messages failed", result, count=len(messages))
            for address, _, body in messages:
                self._quotas.release(address, 1, len(body))
            # The tags stay unsaved and go with the next batch, so that a
            # failed write never lets a replay through.
            self._pending_tags.extend(tags)
            error = StoreError(f"write failed: {result.getErrorMessage()}")
            for d in waiting:
                d.errback(error)
        else:
            self._unsaved_tags.difference_update(tags)
            for d in waiting:
                d.callback(None)
        if self._state == OPEN and self._in_flight == 0 and (self._pending_messages or self._pending_tags):
            # Commits are paced: at most one per commit_delay unless a batch
            # is full.  Each commit is an fsync, and on a virtual machine a
            # stream of fsyncs slows the reactor's core too (measured: the
            # unwrap pipeline ran ~25% slower beside a write+fsync loop).
            wait = self._last_flush + self._limits.commit_delay - self._reactor.seconds()
            if wait <= 0 or len(self._pending_messages) >= self._limits.commit_batch:
                self._flush()
            elif self._flush_call is None:
                self._flush_call = self._reactor.callLater(wait, self._flush)

    # -- IInboxStore -----------------------------------------------------

    def register(self, address, token_hash, now):
        """IInboxStore API"""
        refused = self._refuse()
        if refused:
            return refused
        try:
            check_bytes("address", address)
            check_bytes("token_hash", token_hash)
            check_time(now)
        except TypeError as error:
            return fail(error)
        d = self._run(self._register, address, token_hash, now)

        def registered(_):
            if address not in self._forgetting:
                self._quotas.add_client(address)

        return d.addCallback(registered)

    def _register(self, address, token_hash, now):
        with self._transaction():
            self._db.execute(
                "INSERT INTO clients (address, token_hash, registered) VALUES (?, ?, ?)"
                " ON CONFLICT (address) DO UPDATE"
                " SET token_hash = excluded.token_hash, registered = excluded.registered",
                (address, token_hash, now),
            )

    def authenticate(self, address, token_hash):
        """IInboxStore API"""
        refused = self._refuse()
        if refused:
            return refused
        try:
            check_bytes("token_hash", token_hash)
        except TypeError as error:
            return fail(error)
        d = self._run(self._token_hash, address)
        return d.addCallback(lambda stored: stored is not None and hmac.compare_digest(stored, token_hash))

    def _token_hash(self, address):
        row = self._db.execute("SELECT token_hash FROM clients WHERE address = ?", (address,)).fetchone()
        return None if row is None else row[0]

    def is_registered(self, address):
        """IInboxStore API"""
        return address in self._quotas

    def append(self, address, message, now):
        """IInboxStore API"""
        if self._state != OPEN:
            return fail(StoreError(f"store is {self._state}"))
        try:
            check_time(now)
            self._quotas.reserve(address, message)
        except Exception as error:
            return fail(error)
        d = Deferred()
        self._pending_messages.append((address, now, message))
        self._pending_deferreds.append(d)
        self._schedule_flush()
        return d

    def lease(self, address, max_count, now, lease_seconds):
        """IInboxStore API"""
        refused = self._refuse()
        if refused:
            return refused
        try:
            check_lease_request(max_count, lease_seconds)
            check_time(now)
        except (TypeError, ValueError) as error:
            return fail(error)
        if address not in self._quotas or max_count == 0:
            return succeed((0, []))
        return self._run(self._lease, address, max_count, now, now + lease_seconds, new_lease_id())

    def _lease(self, address, max_count, now, expires, lease_id):
        with self._transaction():
            rows = self._db.execute(_FREE_MESSAGES, (address, now, max_count)).fetchall()
            if not rows:
                return (0, [])
            # A row of its own per leased message: the message rows (and
            # their pages) are not rewritten.
            _insert_rows(
                self._db,
                "INSERT OR REPLACE INTO leases (message_id, lease_id, expires)",
                3,
                [(message_id, lease_id, expires) for message_id, _ in rows],
            )
        return (lease_id, rows)

    def ack(self, address, lease_id):
        """IInboxStore API"""
        refused = self._refuse()
        if refused:
            return refused
        try:
            check_lease_id(lease_id)
        except UnknownLease as error:
            return fail(error)
        if address not in self._quotas:
            return fail(UnknownLease("no such lease"))

        def acked(deleted):
            count, size = deleted
            if count == 0:
                raise UnknownLease("no such lease")
            self._quotas.release(address, count, size)
            return count

        return self._run(self._ack, address, lease_id).addCallback(acked)

    def _ack(self, address, lease_id):
        with self._transaction():
            count, size = self._db.execute(
                "SELECT count(*), coalesce(sum(length(m.body)), 0) FROM leases AS l"
                " JOIN messages AS m ON m.id = l.message_id WHERE l.lease_id = ? AND m.address = ?",
                (lease_id, address),
            ).fetchone()
            if count:
                # The schema's trigger deletes their lease rows.
                self._db.execute(
                    "DELETE FROM messages WHERE address = ?"
                    " AND id IN (SELECT message_id FROM leases WHERE lease_id = ?)",
                    (address, lease_id),
                )
        return (count, size)

    def forget(self, address):
        """IInboxStore API"""
        refused = self._refuse()
        if refused:
            return refused
        if type(address) is not bytes:
            return fail(TypeError("address must be bytes"))
        # Refuse new appends at once; the ones already accepted are written
        # first (the pool runs jobs in order), then deleted with the rest.
        self._quotas.remove_client(address)
        self._forgetting[address] = self._forgetting.get(address, 0) + 1
        while self._pending_messages:
            self._flush()

        def forgotten(result):
            self._forgetting[address] -= 1
            if not self._forgetting[address]:
                del self._forgetting[address]
            # A registration that committed meanwhile may have re-added it.
            self._quotas.remove_client(address)
            return None if not isinstance(result, Failure) else result

        return self._run(self._forget, address).addBoth(forgotten)

    def _forget(self, address):
        with self._transaction():
            self._db.execute("DELETE FROM messages WHERE address = ?", (address,))
            self._db.execute("DELETE FROM clients WHERE address = ?", (address,))

    def expire(self, now):
        """IInboxStore API"""
        refused = self._refuse()
        if refused:
            return refused
        try:
            check_time(now)
        except TypeError as error:
            return fail(error)

        def expired(per_client):
            for address, count, size in per_client:
                self._quotas.release(address, count, size)
            return sum(count for _, count, _ in per_client)

        return self._run(self._expire, now - self._limits.message_ttl, now).addCallback(expired)

    def _expire(self, oldest_kept, now):
        with self._transaction():
            per_client = self._db.execute(
                "SELECT address, count(*), sum(length(body)) FROM messages"
                " WHERE received < ? GROUP BY address",
                (oldest_kept,),
            ).fetchall()
            if per_client:
                self._db.execute("DELETE FROM messages WHERE received < ?", (oldest_kept,))
            self._db.execute("DELETE FROM leases WHERE expires <= ?", (now,))
        return per_client

    def sizes(self):
        """IInboxStore API"""
        return succeed(self._quotas.sizes())

    # -- IReplayCache ----------------------------------------------------

    def check_and_record(self, tag):
        """IReplayCache API"""
        if self._state != OPEN:
            return fail(StoreError(f"store is {self._state}"))
        try:
            certainly_new = self._filter.add(tag)
        except ValueError as error:
            return fail(error)
        if certainly_new:
            self._record_tag(tag)
            return succeed(True)
        if tag in self._unsaved_tags or tag in self._tag_lookups:
            return succeed(False)
        # The filter says "maybe seen": only the table knows.
        self._tag_lookups.add(tag)

        def answered(stored):
            self._tag_lookups.discard(tag)
            if isinstance(stored, Failure):
                return stored
            if stored or tag in self._unsaved_tags:
                return False
            if self._state != OPEN:
                # Too late to make it durable: refuse rather than risk a
                # replay after restart.
                return False
            self._record_tag(tag)
            return True

        return self._run(self._tag_stored, tag).addBoth(answered)

    def _record_tag(self, tag):
        self._unsaved_tags.add(tag)
        self._pending_tags.append(tag)
        self._schedule_flush()

    def _tag_stored(self, tag):
        return self._db.execute("SELECT 1 FROM replay_tags WHERE tag = ?", (tag,)).fetchone() is not None


def _as_store_error(failure):
    if failure.check(sqlite3.Error):
        raise StoreError(f"database error: {failure.getErrorMessage()}") from failure.value
    return failure


class _Transaction:
    """
    ``BEGIN IMMEDIATE`` ... ``COMMIT`` on the DB thread, rolled back on error,
    and counted in ``store.transactions`` once committed.
    """

    def __init__(self, store):
        self._store = store

    def __enter__(self):
        self._store._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind, error, traceback):
        db = self._store._db
        if kind is None:
            db.execute("COMMIT")
            self._store.transactions += 1
        elif db.in_transaction:
            db.execute("ROLLBACK")
        return False
