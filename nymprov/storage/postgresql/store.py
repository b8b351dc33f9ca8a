"""
The inbox store and replay cache on PostgreSQL, shared by any number of
provider processes as one provider.
"""


import psycopg
import psycopg_pool
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, fail, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from nymprov.errors import MessageTooLarge, StoreError, UnknownLease
from nymprov.interfaces import IInboxStore, IReplayCache
from nymprov.storage.bloom import TAG_SIZE
from nymprov.storage.leases import check_lease_id, check_lease_request, new_lease_id
from nymprov.storage.limits import StoreLimits
from nymprov.storage.postgresql import queries, schema
from nymprov.storage.postgresql.batches import GroupCommit
from nymprov.storage.postgresql.listener import POLL_SECONDS, ClientNotices
from nymprov.storage.quota import check_bytes, check_time
from nymprov.storage.tokens import REVOKED_TOKEN_HASH, token_matches

#: Database connections (and threads) per process: one batch writer, one
#: more batch while it commits, and pulls, acks and logins beside them.
DEFAULT_CONNECTIONS = 4
#: Seconds a request waits for a connection before it fails with
#: ``StoreUnavailable``: while the database is away, requests fail soon
#: instead of piling up.
CONNECT_TIMEOUT = 5.0

# Store states; operations are accepted only while OPEN.
NEW, STARTING, OPEN, CLOSING, CLOSED = "new", "starting", "open", "closing", "closed"


class StoreUnavailable(StoreError):
    """
    The database cannot be reached or failed mid-transaction; nothing of
    the failed request was committed, unless the connection broke during
    its COMMIT (then its appends may be stored, and are simply not
    acknowledged: the sender retries, nothing is lost).
    """

    reason = "store_unavailable"


def _as_store_error(failure):
    if failure.check(psycopg_pool.PoolTimeout, psycopg.OperationalError):
        raise StoreUnavailable(f"database unavailable: {failure.getErrorMessage()}") from failure.value
    if failure.check(psycopg.Error):
        raise StoreError(f"database error: {failure.getErrorMessage()}") from failure.value
    return failure


@implementer(IInboxStore, IReplayCache)
class PostgresStore(Service):
    """
    Clients, messages and replay tags in a PostgreSQL database.

    SQL runs on a few threads of the store's own pool, each with a pooled
    connection (``psycopg_pool``), so the reactor never waits on the
    database.  As in the SQLite store, appends and new replay tags are
    grouped: one transaction writes a batch, and each Deferred fires once
    its transaction has committed.

    Unlike the SQLite store, nothing that another process can change is
    answered from memory: a replay tag is new only if this process's insert
    of it won against every other's (the primary key decides), and quotas
    are counted in the client rows, under their locks.  ``is_registered``
    is answered from a set of addresses kept current by LISTEN/NOTIFY.

    ``add_client_observer`` tells the client API of token changes and
    forgets made by any process, so that sessions everywhere end (the
    notices travel by LISTEN/NOTIFY, a few milliseconds).

    :param conninfo: a ``postgresql://`` URL or libpq connection string.
    :param connections: database connections (and threads) of this process.
    :param connect_timeout: seconds a request waits for a connection before
        it fails with ``StoreUnavailable``.
    :ivar transactions: how many batch transactions have committed.
    """

    name = "postgresql-store"
    log = Logger()

    def __init__(self, reactor, conninfo, limits=StoreLimits(), replay_key_id=b"",
                 connections=DEFAULT_CONNECTIONS, connect_timeout=CONNECT_TIMEOUT):
        check_bytes("replay_key_id", replay_key_id)
        if isinstance(connections, bool) or not isinstance(connections, int) or connections < 2:
            raise ValueError("connections must be an int of at least 2")
        self._reactor = reactor
        self._conninfo = conninfo
        self._limits = limits
        self._replay_key_id = replay_key_id
        self._threads = ThreadPool(minthreads=0, maxthreads=connections, name="nymprov-pg")
        self._connections = psycopg_pool.ConnectionPool(
            conninfo, min_size=1, max_size=connections, open=False, timeout=connect_timeout,
            name="nymprov", kwargs={"autocommit": True}, check=psycopg_pool.ConnectionPool.check_connection,
        )
        self._notices = ClientNotices(reactor, conninfo, self._client_changed, self._resync)
        self._observers = []
        self._registered = set()
        self._revoked = set()
        self._state = NEW
        self._shutdown_trigger = None
        self._start_waiters = []
        self._last_sizes = {"clients": 0, "messages": 0, "bytes": 0}
        self._closing = None
        self._batches = GroupCommit(reactor, limits, self._run)

    @property
    def state(self):
        """``new``, ``starting``, ``open``, ``closing`` or ``closed`` (for /health)."""
        return self._state

    @property
    def transactions(self):
        """How many batch transactions have committed; for tests and benchmarks."""
        return self._batches.transactions

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
        Run ``operation(connection, *args)`` on a database thread with a
        pooled connection; psycopg's errors come back as ``StoreError``.
        """
        def with_connection():
            with self._connections.connection() as connection:
                return operation(connection, *args)

        d = deferToThreadPool(self._reactor, self._threads, with_connection)
        return d.addErrback(_as_store_error)

    def start(self):
        """IInboxStore API"""
        if self._state != NEW:
            return fail(StoreError(f"store is {self._state}"))
        self._state = STARTING
        self._threads.start()
        self._shutdown_trigger = self._reactor.addSystemEventTrigger("before", "shutdown", self.close)
        d = deferToThreadPool(self._reactor, self._threads, self._open)
        d.addErrback(_as_store_error)
        d.addCallbacks(self._opened, self._open_failed)
        return d

    def _open(self):
        self._connections.open(wait=True, timeout=self._connections.timeout)
        with self._connections.connection() as connection:
            version, cleared = schema.prepare(connection, self._replay_key_id)
            self._last_sizes = queries.sizes(connection)
            return version, cleared, queries.registered_addresses(connection)

    def _opened(self, result):
        version, cleared, (registered, revoked) = result
        self._registered, self._revoked = registered, revoked
        self._state = OPEN
        if cleared:
            self.log.info("replay key changed: stored replay tags cleared")
        self._notices.start()
        self.log.info("opened PostgreSQL store (schema v{version}) with {clients} clients",
                      version=version, clients=len(registered))
        self._notify_started()

    def _open_failed(self, failure):
        self._state = CLOSED
        self._remove_shutdown_trigger()
        self._threads.stop()
        self._connections.close()
        self._notify_started()
        if failure.check(StoreError):
            return failure
        raise StoreError(f"cannot open the store: {failure.getErrorMessage()}")

    def close(self):
        """IInboxStore API"""
        if self._state == NEW:
            self._state = CLOSED
        if self._state == STARTING:
            # Let the opening finish (or fail) first.
            waiter = Deferred()
            self._start_waiters.append(waiter)
            return waiter.addCallback(lambda _: self.close())
        if self._state == CLOSED:
            return succeed(None)
        if self._closing is None:
            self._state = CLOSING
            self._closing = self._drain_and_close()
        waiter = Deferred()
        self._closing.addBoth(lambda result: waiter.callback(result) or None)
        return waiter

    def _notify_started(self):
        waiters, self._start_waiters = self._start_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def _drain_and_close(self):
        self._notices.stop()
        d = DeferredList(self._batches.drain(), consumeErrors=True)

        def release(_):
            # Joining waits at most one notice poll.
            return deferToThreadPool(self._reactor, self._threads, self._release)

        def closed(result):
            self._threads.stop()
            self._remove_shutdown_trigger()
            self._state = CLOSED
            self.log.info("store closed")
            if isinstance(result, Failure):
                raise StoreError(f"close failed: {result.getErrorMessage()}")

        return d.addCallback(release).addBoth(closed)

    def _release(self):
        try:
            with self._connections.connection() as connection:
                connection.execute("SELECT pg_notify(%s, '')", (self._notices.wake_channel,))
        except (psycopg.Error, psycopg_pool.PoolTimeout):
            pass  # the database is away: the listener stops at its next poll
        self._notices.join(2 * POLL_SECONDS)
        self._connections.close()

    def _remove_shutdown_trigger(self):
        if self._shutdown_trigger is not None:
            try:
                self._reactor.removeSystemEventTrigger(self._shutdown_trigger)
            except ValueError:
                pass  # already run: this close is the shutdown's own
            self._shutdown_trigger = None

    def _refuse(self):
        if self._state != OPEN:
            return fail(StoreError(f"store is {self._state}"))
        return None

    # -- what other processes change -------------------------------------

    def add_client_observer(self, callback):
        """
        Call ``callback(address, token_hash)`` on the reactor thread
        whenever any process rotated the token of ``address`` to
        ``token_hash``, or forgot ``address`` (then ``token_hash`` is
        ``None``); and ``callback(None, None)`` when notices may have been
        missed, so that every session checks its token.
        """
        self._observers.append(callback)

    def _client_changed(self, kind, address, token_hash):
        if self._state != OPEN:
            return
        if kind == "r":
            self._registered.add(address)
            if token_hash == REVOKED_TOKEN_HASH:
                self._revoked.add(address)
        else:
            self._registered.discard(address)
            self._revoked.discard(address)
        for observer in list(self._observers):
            observer(address, token_hash)

    def _resync(self):
        if self._state != OPEN:
            return
        # Notices sent while the listener was away are lost: re-read the
        # clients, and have every session check its token.
        d = self._run(queries.registered_addresses)

        def reread(addresses):
            self._registered, self._revoked = addresses
            for observer in list(self._observers):
                observer(None, None)

        d.addCallbacks(reread, lambda f: self.log.failure("cannot re-read the clients", f))

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

        def registered(_):
            # At once for this process; the notice tells the others.
            self._registered.add(address)
            if token_hash == REVOKED_TOKEN_HASH:
                self._revoked.add(address)

        return self._run(queries.register, address, token_hash, now).addCallback(registered)

    def authenticate(self, address, token_hash):
        """IInboxStore API"""
        refused = self._refuse()
        if refused:
            return refused
        try:
            check_bytes("address", address)
            check_bytes("token_hash", token_hash)
        except TypeError as error:
            return fail(error)
        d = self._run(queries.token_hash, address)
        return d.addCallback(lambda stored: token_matches(stored, token_hash))

    def is_registered(self, address):
        """IInboxStore API"""
        return address in self._registered

    def is_revoked(self, address):
        """IInboxStore API"""
        return address in self._revoked

    def append(self, address, message, now):
        """IInboxStore API"""
        refused = self._refuse()
        if refused:
            return refused
        try:
            check_time(now)
            check_bytes("address", address)
            check_bytes("message", message)
        except TypeError as error:
            return fail(error)
        if len(message) > self._limits.slot_size:
            return fail(MessageTooLarge(f"{len(message)} bytes > slot of {self._limits.slot_size}"))
        # Whether the client exists and has room is decided in the batch's
        # transaction, under its row lock: another process may have just
        # registered it, or filled its inbox.
        return self._batches.append(address, now, message)

    def lease(self, address, max_count, now, lease_seconds):
        """IInboxStore API"""
        refused = self._refuse()
        if refused:
            return refused
        try:
            check_bytes("address", address)
            check_lease_request(max_count, lease_seconds)
            check_time(now)
        except (TypeError, ValueError) as error:
            return fail(error)
        if max_count == 0:
            return succeed((0, []))
        return self._run(queries.lease, address, max_count, now, now + lease_seconds, new_lease_id())

    def _refuse_lease_call(self, address, lease_id):
        """:returns: a failed Deferred if an ack or release cannot be asked now, else ``None``."""
        refused = self._refuse()
        if refused:
            return refused
        try:
            check_lease_id(lease_id)
            check_bytes("address", address)
        except (UnknownLease, TypeError) as error:
            return fail(error)
        return None

    def ack(self, address, lease_id):
        """IInboxStore API"""
        refused = self._refuse_lease_call(address, lease_id)
        if refused:
            return refused

        def acked(count):
            if count == 0:
                raise UnknownLease("no such lease")
            return count

        return self._run(queries.ack, address, lease_id).addCallback(acked)

    def release(self, address, lease_id):
        """IInboxStore API"""
        return self._refuse_lease_call(address, lease_id) or self._run(queries.release, address, lease_id)

    def forget(self, address):
        """IInboxStore API"""
        refused = self._refuse()
        if refused:
            return refused
        try:
            check_bytes("address", address)
        except TypeError as error:
            return fail(error)
        # Appends accepted before the forget are committed first, then
        # deleted with the rest.
        self._registered.discard(address)
        self._revoked.discard(address)
        waiting = DeferredList(self._batches.drain(), consumeErrors=True)
        d = waiting.addCallback(lambda _: self._run(queries.forget, address))

        def forgotten(_):
            self._registered.discard(address)
            self._revoked.discard(address)

        return d.addCallback(forgotten)

    def expire(self, now):
        """IInboxStore API"""
        refused = self._refuse()
        if refused:
            return refused
        try:
            check_time(now)
        except TypeError as error:
            return fail(error)
        return self._run(queries.expire, now - self._limits.message_ttl)

    def sizes(self):
        """IInboxStore API"""
        if self._state != OPEN:
            # A closed store's last word (the node's final stats line asks
            # after the close), as the SQLite store answers from memory.
            return succeed(dict(self._last_sizes))

        def remember(sizes):
            self._last_sizes = sizes
            return sizes

        return self._run(queries.sizes).addCallback(remember)

    # -- IReplayCache ----------------------------------------------------

    def check_and_record(self, tag):
        """IReplayCache API"""
        refused = self._refuse()
        if refused:
            return refused
        if type(tag) is not bytes or len(tag) != TAG_SIZE:
            return fail(ValueError("a replay tag is 16 bytes"))
        return self._batches.record_tag(tag)
