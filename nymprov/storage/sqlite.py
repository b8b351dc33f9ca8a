"""
The durable inbox store and replay cache, in one SQLite file.
"""

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
from nymprov.storage.bloom import TagFilter
from nymprov.storage.leases import check_lease_id, check_lease_request, new_lease_id
from nymprov.storage.limits import StoreLimits
from nymprov.storage.quota import InboxQuotas, check_bytes, check_time
from nymprov.storage.sqlite_file import SQLiteFile
from nymprov.storage.tokens import REVOKED_TOKEN_HASH, token_matches

SYNCHRONOUS_MODES = ("FULL", "NORMAL", "EXTRA")
DEFAULT_FILTER_BYTES = 4 * 1024 * 1024

# Store states; operations are accepted only while OPEN.
NEW, STARTING, OPEN, CLOSING, CLOSED = "new", "starting", "open", "closing", "closed"


@implementer(IInboxStore, IReplayCache)
class SQLiteStore(Service):
    """
    Clients, messages and replay tags in one SQLite file in WAL mode.

    All SQL runs on one dedicated thread, so the connection never crosses
    threads and the reactor never waits on ``fsync``.  Methods whose names
    of :class:`nymprov.storage.sqlite_file.SQLiteFile` run on that thread and
    take every input as an argument.  Appends and new replay tags are grouped:
    one transaction writes a whole batch, and each append's Deferred fires
    only once its transaction has committed.

    What the hot path asks (is this client registered, is its inbox full,
    was this tag seen) is answered from memory: per-client usage, and a
    fixed-size Bloom filter of replay tags backed by the ``replay_tags``
    table.

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
        self._file = SQLiteFile()  # used on the DB thread only
        self._state = NEW
        self._close_waiters = []
        self._start_waiters = []
        self._quotas = InboxQuotas(limits)
        self._revoked = set()  # addresses whose token hash is REVOKED_TOKEN_HASH
        self._forgetting = {}
        self._filter = TagFilter(replay_filter_bytes)
        self._tags_held = 0
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

    def client_usage(self):
        """
        :returns: ``[(address, messages, bytes)]`` of every registered
            client, by address, as accounted now (for the admin commands).
        """
        return self._quotas.usage()

    @property
    def replay_tag_count(self):
        """How many replay tags are held (for the gauges)."""
        return self._tags_held

    @property
    def state(self):
        """``new``, ``starting``, ``open``, ``closing`` or ``closed``."""
        return self._state

    @property
    def transactions(self):
        """How many write transactions have committed; for tests and benchmarks."""
        return self._file.transactions

    # -- life cycle ----------------------------------------------------

    def startService(self):
        """
        Open the store; a node's service tree waits for the returned
        Deferred before starting what feeds the store.
        """
        Service.startService(self)
        return self.start()

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
        # No shutdown trigger of its own: whoever starts the store closes it
        # (a node's service tree, once nothing can write to it any more).
        self._pool.start()
        d = self._run(self._file.open, self._path, self._synchronous, self._replay_key_id, self._filter)
        d.addCallbacks(self._opened, self._open_failed)
        return d

    def _opened(self, result):
        usage, self._revoked = result
        self._state = OPEN
        # The filter was filled with the stored tags, each once; it counts
        # every insertion after that, replays too, so new ones are counted
        # here.
        self._tags_held = self._filter.count
        for address, count, size in usage:
            self._quotas.add_client(address, count, size)
        if len(self._quotas) or self._quotas.messages:
            self.log.info(
                "opened {path}: {clients} clients, {messages} messages, {tags} replay tags",
                path=self._path,
                clients=len(self._quotas),
                messages=self._quotas.messages,
                tags=self._filter.count,
            )
        else:
            # A mix node's replay cache (or an empty provider store): no
            # "0 clients" that would puzzle a mix node's operator.
            self.log.info("opened {path}: {tags} replay tags", path=self._path, tags=self._filter.count)
        self._notify_started()

    def _notify_started(self):
        waiters, self._start_waiters = self._start_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def _open_failed(self, failure):
        self._state = CLOSED
        self._pool.stop()
        self._notify_started()
        if failure.check(StoreError):
            return failure
        raise StoreError(f"cannot open the store: {failure.getErrorMessage()}")

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
            self._state = CLOSED
            self.log.info("store closed")
            waiters, self._close_waiters = self._close_waiters, []
            for d in waiters:
                if isinstance(result, Failure):
                    d.errback(StoreError(f"close failed: {result.getErrorMessage()}"))
                else:
                    d.callback(None)

        self._run(self._file.close).addBoth(closed)
        return waiter

    def _refuse(self):
        """
        :returns: a failed Deferred if the store does not take requests now.
        """
        if self._state != OPEN:
            return fail(StoreError(f"store is {self._state}"))
        return None

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
        d = self._run(self._file.write_batch, messages, tags)
        d.addBoth(self._batch_written, messages, waiting, tags)

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
        d = self._run(self._file.register, address, token_hash, now)

        def registered(_):
            if address not in self._forgetting:
                self._quotas.add_client(address)
                if token_hash == REVOKED_TOKEN_HASH:
                    self._revoked.add(address)

        return d.addCallback(registered)

    def authenticate(self, address, token_hash):
        """IInboxStore API"""
        refused = self._refuse()
        if refused:
            return refused
        try:
            check_bytes("token_hash", token_hash)
        except TypeError as error:
            return fail(error)
        d = self._run(self._file.token_hash, address)
        return d.addCallback(lambda stored: token_matches(stored, token_hash))

    def is_registered(self, address):
        """IInboxStore API"""
        return address in self._quotas

    def is_revoked(self, address):
        """IInboxStore API"""
        return address in self._revoked

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
        return self._run(self._file.lease, address, max_count, now, now + lease_seconds, new_lease_id())

    def _refuse_lease_call(self, lease_id):
        """:returns: a failed Deferred if an ack or release cannot be asked now, else ``None``."""
        refused = self._refuse()
        if refused:
            return refused
        try:
            check_lease_id(lease_id)
        except UnknownLease as error:
            return fail(error)
        return None

    def ack(self, address, lease_id):
        """IInboxStore API"""
        refused = self._refuse_lease_call(lease_id)
        if refused:
            return refused
        if address not in self._quotas:
            return fail(UnknownLease("no such lease"))

        def acked(deleted):
            count, size = deleted
            if count == 0:
                raise UnknownLease("no such lease")
            self._quotas.release(address, count, size)
            return count

        return self._run(self._file.ack, address, lease_id).addCallback(acked)

    def release(self, address, lease_id):
        """IInboxStore API"""
        return self._refuse_lease_call(lease_id) or self._run(self._file.release, address, lease_id)

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
        self._revoked.discard(address)
        self._forgetting[address] = self._forgetting.get(address, 0) + 1
        while self._pending_messages:
            self._flush()

        def forgotten(result):
            self._forgetting[address] -= 1
            if not self._forgetting[address]:
                del self._forgetting[address]
            # A registration that committed meanwhile may have re-added it.
            self._quotas.remove_client(address)
            self._revoked.discard(address)
            return None if not isinstance(result, Failure) else result

        return self._run(self._file.forget, address).addBoth(forgotten)

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

        return self._run(self._file.expire, now - self._limits.message_ttl, now).addCallback(expired)

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

        return self._run(self._file.tag_stored, tag).addBoth(answered)

    def _record_tag(self, tag):
        self._tags_held += 1
        self._unsaved_tags.add(tag)
        self._pending_tags.append(tag)
        self._schedule_flush()



def _as_store_error(failure):
    if failure.check(sqlite3.Error):
        raise StoreError(f"database error: {failure.getErrorMessage()}") from failure.value
    return failure
