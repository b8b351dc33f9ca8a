"""
The store contract, and what is PostgreSQL's own, against a real server.
"""

import psycopg
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from nymprov.errors import InboxFull, StoreError
from nymprov.storage.limits import StoreLimits
from nymprov.storage.postgresql import PostgresStore, StoreUnavailable, schema
from tests.pgsupport import cuttable_proxy, fresh_schema
from tests.support import WAIT_LIMIT, wait_for
from tests.test_storage import ALICE, BOB, T0, _StoreContract, tag, token_hash


def run_sql(conninfo, query, *args):
    """Run one statement on a connection of its own; its rows, if any."""
    with psycopg.connect(conninfo, autocommit=True) as connection:
        cursor = connection.execute(query, args or None)
        return cursor.fetchall() if cursor.description else None


class PostgresStoreTests(_StoreContract, TestCase):
    """
    The contract, for the PostgreSQL store on a real server; plus what only
    a shared database has.
    """

    def setUp(self):
        self.conninfo = fresh_schema(self)

    def new_store(self, limits, **kwargs):
        return PostgresStore(reactor, self.conninfo, limits, **kwargs)

    def sql(self, query, *args):
        return run_sql(self.conninfo, query, *args)

    @inlineCallbacks
    def reopen(self, store, limits=StoreLimits(), **kwargs):
        yield store.close()
        return (yield self.open_store(limits, **kwargs))

    @inlineCallbacks
    def test_restart_keeps_everything(self):
        """
        Clients, tokens, messages, leases, quotas and replay tags survive a
        restart.
        """
        limits = StoreLimits(max_messages=3)
        store = yield self.registered_store(limits, clients=(ALICE, BOB))
        for i in range(3):
            yield store.append(ALICE, b"m%d" % i, T0)
        self.assertTrue((yield store.check_and_record(tag(1))))
        lease_id, _ = yield store.lease(ALICE, 1, T0, 30)
        store = yield self.reopen(store, limits)
        self.assertTrue(store.is_registered(ALICE))
        self.assertTrue(store.is_registered(BOB))
        self.assertTrue((yield store.authenticate(ALICE, token_hash(ALICE))))
        self.assertEqual((yield store.sizes()), {"clients": 2, "messages": 3, "bytes": 6})
        yield self.assertFailure(store.append(ALICE, b"m3", T0), InboxFull)
        _, free = yield store.lease(ALICE, 10, T0, 30)
        self.assertEqual([b for _, b in free], [b"m1", b"m2"])
        self.assertEqual((yield store.ack(ALICE, lease_id)), 1)
        self.assertFalse((yield store.check_and_record(tag(1))))

    @inlineCallbacks
    def test_key_change_clears_tags(self):
        """
        Opening with another replay key id starts with no tags.
        """
        store = yield self.open_store(replay_key_id=b"key-1")
        yield store.check_and_record(tag(1))
        store = yield self.reopen(store, replay_key_id=b"key-2")
        self.assertTrue((yield store.check_and_record(tag(1))))
        self.assertFalse((yield store.check_and_record(tag(1))))

    @inlineCallbacks
    def test_appends_fire_after_commit(self):
        """
        An append's Deferred fires only once its transaction has committed,
        and many concurrent appends share few transactions.
        """
        store = yield self.registered_store()
        before = store.transactions
        d = store.append(ALICE, b"m", T0)
        self.assertNoResult(d)
        yield d
        self.assertEqual(store.transactions, before + 1)
        self.assertEqual(self.sql("SELECT body FROM messages"), [(b"m",)])
        yield gatherResults([store.append(ALICE, b"m%d" % i, T0) for i in range(2000)])
        self.assertLessEqual(store.transactions - before, 21)
        size = 1 + sum(len(b"m%d" % i) for i in range(2000))
        self.assertEqual(self.sql("SELECT messages, bytes FROM clients"), [(2001, size)])

    @inlineCallbacks
    def test_close_flushes_pending(self):
        """
        Close commits appends and tags still waiting for their batch.
        """
        slow = StoreLimits(commit_delay=60)
        store = yield self.registered_store(slow)
        pending = [store.append(ALICE, b"m%d" % i, T0) for i in range(5)]
        answer = store.check_and_record(tag(1))
        yield store.close()
        for d in pending:
            self.assertIsNone(self.successResultOf(d))
        self.assertTrue(self.successResultOf(answer))
        store = yield self.open_store(slow)
        _, messages = yield store.lease(ALICE, 10, T0, 30)
        self.assertEqual(len(messages), 5)
        # A tag check waits for a batch too: not 60 seconds of it.
        store = yield self.reopen(store)
        self.assertFalse((yield store.check_and_record(tag(1))))

    @inlineCallbacks
    def test_newer_schema_refused(self):
        """
        A database of a newer schema version is refused with StoreError and
        left as it was.
        """
        store = yield self.registered_store()
        yield store.close()
        self.sql("UPDATE version SET version = %s", schema.CURRENT_VERSION + 1)
        yield self.assertFailure(self.new_store(StoreLimits()).start(), StoreError)
        self.assertEqual(self.sql("SELECT version FROM version"), [(schema.CURRENT_VERSION + 1,)])
        self.assertEqual(self.sql("SELECT count(*) FROM clients"), [(1,)])

    @inlineCallbacks
    def test_foreign_tables_refused(self):
        """
        A schema with tables that are not a nymprov store is refused with
        StoreError, and nothing is created in it.
        """
        self.sql("CREATE TABLE unrelated (x integer)")
        yield self.assertFailure(self.new_store(StoreLimits()).start(), StoreError)
        self.assertEqual(
            self.sql("SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"),
            [("unrelated",)],
        )

    def test_upgrade_steps(self):
        """
        An older schema is brought up one script at a time, in one
        transaction: a failing step leaves it at the version it had.
        """
        scripts = {
            "upgrade-to-v2.sql": "ALTER TABLE clients ADD COLUMN note text; UPDATE version SET version = 2;",
            "upgrade-to-v3.sql": "UPDATE version SET version = 7;",
        }

        def read(name):
            return scripts[name] if name in scripts else schema.read_script(name)

        with psycopg.connect(self.conninfo, autocommit=True) as connection:
            self.assertEqual(schema.prepare(connection, b"k", current_version=1, read=read), (1, False))
            self.assertRaises(StoreError, schema.prepare, connection, b"k", current_version=3, read=read)
            self.assertEqual(self.sql("SELECT version FROM version"), [(1,)])
            self.assertEqual(schema.prepare(connection, b"k", current_version=2, read=read), (2, False))
        self.assertEqual(self.sql("SELECT note FROM clients"), [])

    @inlineCallbacks
    def test_service(self):
        """
        As a service, the store opens on start and closes on stop.
        """
        store = self.new_store(StoreLimits())
        yield store.startService()
        self.assertTrue(store.running)
        yield store.stopService()
        yield self.assertFailure(store.append(ALICE, b"x", T0), StoreError)
        self.assertEqual(self.sql("SELECT version FROM version"), [(schema.CURRENT_VERSION,)])


class SharedDatabaseTests(TestCase):
    """
    Two stores on one database, as two provider processes would have:
    every arbiter is in the database.
    """

    def setUp(self):
        self.conninfo = fresh_schema(self)

    @inlineCallbacks
    def two_stores(self, limits=StoreLimits(), conninfo=None):
        stores = []
        for _ in range(2):
            store = PostgresStore(reactor, conninfo or self.conninfo, limits)
            yield store.start()
            self.addCleanup(store.close)
            stores.append(store)
        return stores

    @inlineCallbacks
    def test_replay_refused_by_the_other(self):
        """
        A tag recorded by one store is a replay for the other; of copies
        sent to both at once, exactly one passes.
        """
        first, second = yield self.two_stores()
        self.assertTrue((yield first.check_and_record(tag(1))))
        self.assertFalse((yield second.check_and_record(tag(1))))
        answers = yield gatherResults(
            [store.check_and_record(tag(2)) for store in (first, second) for _ in range(5)]
        )
        self.assertEqual(answers.count(True), 1)

    @inlineCallbacks
    def test_quota_across_stores(self):
        """
        Appends through both stores at once never overfill an inbox.
        """
        first, second = yield self.two_stores(StoreLimits(max_messages=50))
        yield first.register(ALICE, token_hash(ALICE), T0)
        appends = [store.append(ALICE, b"m%d" % i, T0) for i in range(40) for store in (first, second)]
        outcomes = yield gatherResults([d.addCallbacks(lambda _: True, lambda f: f.trap(InboxFull) and False)
                                        for d in appends])
        self.assertEqual(outcomes.count(True), 50)
        self.assertEqual((yield second.sizes())["messages"], 50)

    @inlineCallbacks
    def test_concurrent_leases_disjoint(self):
        """
        Pulls through both stores at once get disjoint messages, and acks
        through either delete each message exactly once.
        """
        first, second = yield self.two_stores()
        yield first.register(ALICE, token_hash(ALICE), T0)
        yield gatherResults([first.append(ALICE, b"%d" % i, T0) for i in range(300)])
        seen = []
        while True:
            leases = yield gatherResults([store.lease(ALICE, 7, T0, 30) for store in (first, second) * 3])
            if not any(messages for _, messages in leases):
                break
            for (lease_id, messages), store in zip(leases, (second, first) * 3):
                if lease_id:
                    seen.extend(body for _, body in messages)
                    self.assertEqual((yield store.ack(ALICE, lease_id)), len(messages))
        self.assertEqual(sorted(seen), sorted(b"%d" % i for i in range(300)))
        self.assertEqual((yield first.sizes())["messages"], 0)

    @inlineCallbacks
    def test_changes_reach_the_other(self):
        """
        A registration, a token rotation and a forget through one store are
        told to the other's observers, and its ``is_registered`` follows.
        """
        first, second = yield self.two_stores()
        told = []
        hashes = []
        second.add_client_observer(lambda address, token_hash: told.append(address))
        second.add_client_observer(lambda *change: hashes.append(change))
        # None: the other is listening, and has re-read the clients.
        yield Deferred.fromCoroutine(wait_for(lambda: None in told, "listening"))
        yield first.register(ALICE, token_hash(b"old"), T0)
        yield Deferred.fromCoroutine(wait_for(lambda: second.is_registered(ALICE), "registration notice"))
        yield first.register(ALICE, token_hash(b"new"), T0)
        yield Deferred.fromCoroutine(wait_for(lambda: told.count(ALICE) == 2, "rotation notice"))
        self.assertFalse((yield second.authenticate(ALICE, token_hash(b"old"))))
        self.assertEqual(hashes[-1], (ALICE, token_hash(b"new")))
        yield first.forget(ALICE)
        yield Deferred.fromCoroutine(wait_for(lambda: not second.is_registered(ALICE), "forget notice"))
        self.assertEqual(told.count(ALICE), 3)
        self.assertEqual(hashes[-1], (ALICE, None))

    @inlineCallbacks
    def test_database_away_and_back(self):
        """
        While the database cannot be reached, writes fail with
        StoreUnavailable and nothing committed is lost; once it is back,
        the store works again without a restart.
        """
        proxy, conninfo = cuttable_proxy(self, self.conninfo)
        store = PostgresStore(reactor, conninfo, connect_timeout=1.0)
        yield store.start()
        self.addCleanup(store.close)
        yield store.register(ALICE, token_hash(ALICE), T0)
        yield gatherResults([store.append(ALICE, b"kept%d" % i, T0) for i in range(10)])
        yield proxy.cut()
        yield self.assertFailure(store.append(ALICE, b"lost", T0), StoreUnavailable)
        yield self.assertFailure(store.check_and_record(tag(1)), StoreUnavailable)
        yield self.assertFailure(store.lease(ALICE, 10, T0, 30), StoreUnavailable)
        self.flushLoggedErrors(StoreUnavailable, psycopg.OperationalError)
        self.assertEqual(len(run_sql(self.conninfo, "SELECT id FROM messages")), 10)
        proxy.restore()

        async def recovered():
            while True:
                try:
                    await store.append(ALICE, b"after", T0)
                    return
                except StoreUnavailable:
                    await deferLater(reactor, 0.1, lambda: None)

        yield Deferred.fromCoroutine(recovered()).addTimeout(WAIT_LIMIT, reactor)
        self.flushLoggedErrors(StoreUnavailable, psycopg.OperationalError)
        self.assertTrue((yield store.check_and_record(tag(1))))
        _, messages = yield store.lease(ALICE, 20, T0, 30)
        self.assertEqual(sorted(b for _, b in messages), sorted([b"kept%d" % i for i in range(10)] + [b"after"]))


class SchemasApartTests(TestCase):
    """Two providers in two schemas of one database share nothing."""

    @inlineCallbacks
    def test_notices_stay_in_their_schema(self):
        """
        A registration in one schema is not told to a store of another
        (the notice channel was database-wide: another provider's notices
        added its clients to this one's and closed sessions of the same
        address here).  Notices arrive in commit order, so once this
        store has heard its own later registration, it would have heard
        the other's.
        """
        stores = []
        for _ in range(2):
            store = PostgresStore(reactor, fresh_schema(self), StoreLimits())
            yield store.start()
            self.addCleanup(store.close)
            stores.append(store)
        other, here = stores
        told = []
        here.add_client_observer(lambda address, token_hash: told.append(address))
        yield Deferred.fromCoroutine(wait_for(lambda: None in told, "listening"))
        yield other.register(ALICE, token_hash(ALICE), T0)
        yield here.register(BOB, token_hash(BOB), T0)
        yield Deferred.fromCoroutine(wait_for(lambda: BOB in told, "this schema's own notice"))
        self.assertNotIn(ALICE, told)
        self.assertFalse(here.is_registered(ALICE))
