"""
Tests for the inbox stores and replay caches: one contract, two stores.
"""

import hashlib
import os
import sqlite3

from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from nymprov.storage.tokens import REVOKED_TOKEN_HASH
from nymprov.errors import ClientRevoked, InboxFull, MessageTooLarge, StoreError, UnknownDestination, UnknownLease
from nymprov.interfaces import IInboxStore, IReplayCache
from nymprov.storage import schema
from nymprov.storage.limits import StoreLimits
from nymprov.storage.memory import MemoryStore
from nymprov.storage.sqlite_file import SQLiteFile
from nymprov.storage.sqlite import SQLiteStore

T0 = 1_700_000_000.0
ALICE = b"A" * 32
BOB = b"B" * 32


def token_hash(token):
    """The stored form of ``token``."""
    return hashlib.sha256(token).digest()


def tag(number):
    """A distinct 16-byte replay tag for ``number``."""
    return hashlib.sha256(b"tag%d" % number).digest()[:16]


class _StoreContract:
    """
    The behaviour every ``IInboxStore`` + ``IReplayCache`` must show.

    Subclasses define ``new_store(limits)`` returning an unstarted store.
    """

    @inlineCallbacks
    def open_store(self, limits=StoreLimits(), **kwargs):
        store = self.new_store(limits, **kwargs)
        yield store.start()
        self.addCleanup(store.close)
        return store

    @inlineCallbacks
    def registered_store(self, limits=StoreLimits(), clients=(ALICE,)):
        store = yield self.open_store(limits)
        for address in clients:
            yield store.register(address, token_hash(address), T0)
        return store

    @inlineCallbacks
    def test_provides_interfaces(self):
        """
        The store provides both interfaces it declares.
        """
        store = yield self.open_store()
        self.assertTrue(verifyObject(IInboxStore, store))
        self.assertTrue(verifyObject(IReplayCache, store))

    @inlineCallbacks
    def test_register_authenticate(self):
        """
        A registered client authenticates with its token hash and no other;
        an unknown client never does.
        """
        store = yield self.open_store()
        self.assertFalse(store.is_registered(ALICE))
        yield store.register(ALICE, token_hash(b"t1"), T0)
        self.assertTrue(store.is_registered(ALICE))
        self.assertTrue((yield store.authenticate(ALICE, token_hash(b"t1"))))
        self.assertFalse((yield store.authenticate(ALICE, token_hash(b"t2"))))
        self.assertFalse((yield store.authenticate(BOB, token_hash(b"t1"))))

    @inlineCallbacks
    def test_rotate_token(self):
        """
        Registering again replaces the token: the old one fails, the new one
        works, and the inbox is kept.
        """
        store = yield self.open_store()
        yield store.register(ALICE, token_hash(b"old"), T0)
        yield store.append(ALICE, b"kept", T0)
        yield store.register(ALICE, token_hash(b"new"), T0 + 1)
        self.assertFalse((yield store.authenticate(ALICE, token_hash(b"old"))))
        self.assertTrue((yield store.authenticate(ALICE, token_hash(b"new"))))
        _, messages = yield store.lease(ALICE, 10, T0, 30)
        self.assertEqual([body for _, body in messages], [b"kept"])

    @inlineCallbacks
    def test_unknown_destination(self):
        """
        An append to an unregistered address fails with UnknownDestination
        and stores nothing.
        """
        store = yield self.open_store()
        yield self.assertFailure(store.append(BOB, b"x", T0), UnknownDestination)
        self.assertEqual((yield store.sizes()), {"clients": 0, "messages": 0, "bytes": 0})

    @inlineCallbacks
    def test_message_too_large(self):
        """
        A message one byte over the slot size is refused; one of exactly
        the slot size is stored.
        """
        store = yield self.registered_store(StoreLimits(slot_size=100))
        yield self.assertFailure(store.append(ALICE, b"x" * 101, T0), MessageTooLarge)
        yield store.append(ALICE, b"x" * 100, T0)
        self.assertEqual((yield store.sizes())["bytes"], 100)

    @inlineCallbacks
    def test_message_quota_keeps_stored(self):
        """
        When the inbox holds ``max_messages``, the next append is refused
        with InboxFull and every stored message stays.
        """
        store = yield self.registered_store(StoreLimits(max_messages=3))
        yield gatherResults([store.append(ALICE, b"m%d" % i, T0) for i in range(3)])
        yield self.assertFailure(store.append(ALICE, b"m3", T0), InboxFull)
        _, messages = yield store.lease(ALICE, 10, T0, 30)
        self.assertEqual([body for _, body in messages], [b"m0", b"m1", b"m2"])

    @inlineCallbacks
    def test_byte_quota_and_ack_frees(self):
        """
        The byte quota refuses a message that would overflow it; acking
        frees room for it.
        """
        store = yield self.registered_store(StoreLimits(max_bytes=10))
        yield store.append(ALICE, b"123456", T0)
        yield self.assertFailure(store.append(ALICE, b"12345", T0), InboxFull)
        yield store.append(ALICE, b"1234", T0)
        lease_id, _ = yield store.lease(ALICE, 1, T0, 30)
        self.assertEqual((yield store.ack(ALICE, lease_id)), 1)
        yield store.append(ALICE, b"12345", T0)
        self.assertEqual((yield store.sizes())["bytes"], 9)

    @inlineCallbacks
    def test_quota_is_per_client(self):
        """
        One client's full inbox does not refuse messages for another.
        """
        store = yield self.registered_store(StoreLimits(max_messages=1), clients=(ALICE, BOB))
        yield store.append(ALICE, b"a", T0)
        yield self.assertFailure(store.append(ALICE, b"a", T0), InboxFull)
        yield store.append(BOB, b"b", T0)

    @inlineCallbacks
    def test_leases_do_not_overlap(self):
        """
        Two live leases never hand out the same message, and messages come
        oldest first.
        """
        store = yield self.registered_store()
        for i in range(5):
            yield store.append(ALICE, b"m%d" % i, T0 + i)
        first_id, first = yield store.lease(ALICE, 2, T0 + 10, 30)
        second_id, second = yield store.lease(ALICE, 2, T0 + 10, 30)
        third_id, third = yield store.lease(ALICE, 2, T0 + 10, 30)
        self.assertEqual([b for _, b in first + second + third], [b"m0", b"m1", b"m2", b"m3", b"m4"])
        self.assertEqual(len({first_id, second_id, third_id}), 3)
        for lease_id in (first_id, second_id, third_id):
            self.assertTrue(0 < lease_id < 2**63)
        self.assertEqual((yield store.lease(ALICE, 2, T0 + 10, 30)), (0, []))

    @inlineCallbacks
    def test_lease_expiry_returns_messages(self):
        """
        Messages under a lease that was never acked are leased again once
        it lapses, under a new lease id.
        """
        store = yield self.registered_store()
        yield store.append(ALICE, b"once", T0)
        lease_id, messages = yield store.lease(ALICE, 10, T0, 30)
        self.assertEqual((yield store.lease(ALICE, 10, T0 + 29, 30)), (0, []))
        again_id, again = yield store.lease(ALICE, 10, T0 + 30, 30)
        self.assertEqual(again, messages)
        self.assertNotEqual(again_id, lease_id)
        yield self.assertFailure(store.ack(ALICE, lease_id), UnknownLease)
        self.assertEqual((yield store.ack(ALICE, again_id)), 1)

    @inlineCallbacks
    def test_revoked(self):
        """
        Registering the revoked token hash revokes: the old token fails,
        ``is_revoked`` says so (after a restart too, where the store has
        one), another token is refused with ``ClientRevoked``; FORGET ends
        it.
        """
        store = yield self.registered_store(clients=(ALICE, BOB))
        self.assertFalse(store.is_revoked(ALICE))
        yield store.register(ALICE, REVOKED_TOKEN_HASH, T0)
        self.assertTrue(store.is_revoked(ALICE))
        self.assertFalse(store.is_revoked(BOB))
        self.assertFalse((yield store.authenticate(ALICE, token_hash(ALICE))))
        if hasattr(self, "reopen"):
            store = yield self.reopen(store)
            self.assertTrue(store.is_revoked(ALICE))
        # A registration that raced the revocation does not undo it.
        yield self.assertFailure(store.register(ALICE, token_hash(b"new"), T0), ClientRevoked)
        self.assertTrue(store.is_revoked(ALICE))
        self.assertFalse((yield store.authenticate(ALICE, token_hash(b"new"))))
        yield store.register(ALICE, REVOKED_TOKEN_HASH, T0)
        yield store.forget(ALICE)
        self.assertFalse(store.is_revoked(ALICE))
        yield store.register(ALICE, token_hash(b"again"), T0)
        self.assertTrue((yield store.authenticate(ALICE, token_hash(b"again"))))

    @inlineCallbacks
    def test_release(self):
        """
        A released lease frees its messages at once (a pull's connection
        ended before its ACK); only that lease's, only its client's; an
        unknown lease releases nothing.
        """
        store = yield self.registered_store(clients=(ALICE, BOB))
        for i in range(3):
            yield store.append(ALICE, b"m%d" % i, T0)
        first, _ = yield store.lease(ALICE, 2, T0, 30)
        second, _ = yield store.lease(ALICE, 2, T0, 30)
        self.assertEqual((yield store.release(BOB, first)), 0)
        self.assertEqual((yield store.release(ALICE, first)), 2)
        self.assertEqual((yield store.release(ALICE, first)), 0)
        again, messages = yield store.lease(ALICE, 10, T0 + 1, 30)
        self.assertEqual([b for _, b in messages], [b"m0", b"m1"])
        yield self.assertFailure(store.ack(ALICE, first), UnknownLease)
        self.assertEqual((yield store.ack(ALICE, second)), 1)
        self.assertEqual((yield store.ack(ALICE, again)), 2)

    @inlineCallbacks
    def test_ack(self):
        """
        An ack deletes the leased messages only; a second ack of the same
        lease fails with UnknownLease.
        """
        store = yield self.registered_store()
        for i in range(3):
            yield store.append(ALICE, b"m%d" % i, T0)
        lease_id, _ = yield store.lease(ALICE, 2, T0, 30)
        self.assertEqual((yield store.ack(ALICE, lease_id)), 2)
        yield self.assertFailure(store.ack(ALICE, lease_id), UnknownLease)
        _, rest = yield store.lease(ALICE, 10, T0, 30)
        self.assertEqual([b for _, b in rest], [b"m2"])
        self.assertEqual((yield store.sizes())["messages"], 1)

    @inlineCallbacks
    def test_ack_other_clients_lease(self):
        """
        A client cannot ack another client's lease: it fails with
        UnknownLease and the messages stay.
        """
        store = yield self.registered_store(clients=(ALICE, BOB))
        yield store.append(ALICE, b"secret", T0)
        lease_id, _ = yield store.lease(ALICE, 10, T0, 30)
        yield self.assertFailure(store.ack(BOB, lease_id), UnknownLease)
        self.assertEqual((yield store.sizes())["messages"], 1)
        self.assertEqual((yield store.ack(ALICE, lease_id)), 1)

    @inlineCallbacks
    def test_ack_malformed_lease(self):
        """
        Lease ids no lease can carry fail with UnknownLease.
        """
        store = yield self.registered_store()
        for bad in (0, -1, 2**63, "1", None, True):
            yield self.assertFailure(store.ack(ALICE, bad), UnknownLease)

    @inlineCallbacks
    def test_lease_bad_requests(self):
        """
        A lease of zero messages is empty; a negative count or a
        non-positive lease time is refused without leasing anything.
        """
        store = yield self.registered_store()
        yield store.append(ALICE, b"m", T0)
        self.assertEqual((yield store.lease(ALICE, 0, T0, 30)), (0, []))
        yield self.assertFailure(store.lease(ALICE, -1, T0, 30), ValueError)
        yield self.assertFailure(store.lease(ALICE, 1, T0, 0), ValueError)
        yield self.assertFailure(store.lease(ALICE, "1", T0, 30), TypeError)
        _, messages = yield store.lease(ALICE, 10, T0, 30)
        self.assertEqual(len(messages), 1)

    @inlineCallbacks
    def test_forget(self):
        """
        Forgetting a client deletes it, its token and its inbox.
        """
        store = yield self.registered_store(clients=(ALICE, BOB))
        yield store.append(ALICE, b"a", T0)
        yield store.append(BOB, b"b", T0)
        yield store.forget(ALICE)
        self.assertFalse(store.is_registered(ALICE))
        self.assertFalse((yield store.authenticate(ALICE, token_hash(ALICE))))
        self.assertEqual((yield store.lease(ALICE, 10, T0, 30)), (0, []))
        yield self.assertFailure(store.append(ALICE, b"a", T0), UnknownDestination)
        self.assertEqual((yield store.sizes()), {"clients": 1, "messages": 1, "bytes": 1})
        yield store.register(ALICE, token_hash(ALICE), T0)
        self.assertEqual((yield store.lease(ALICE, 10, T0, 30)), (0, []))

    @inlineCallbacks
    def test_forget_with_appends_in_flight(self):
        """
        Appends accepted before a forget still fire, and the forget then
        deletes their messages too.
        """
        store = yield self.registered_store()
        pending = [store.append(ALICE, b"m%d" % i, T0) for i in range(3)]
        forgotten = store.forget(ALICE)
        yield gatherResults(pending)
        yield forgotten
        self.assertEqual((yield store.sizes()), {"clients": 0, "messages": 0, "bytes": 0})
        yield store.register(ALICE, token_hash(ALICE), T0)
        self.assertEqual((yield store.lease(ALICE, 10, T0, 30)), (0, []))

    @inlineCallbacks
    def test_expire(self):
        """
        Expiry deletes messages older than the TTL, keeps younger ones,
        frees their quota and returns lapsed leases' messages.
        """
        store = yield self.registered_store(StoreLimits(message_ttl=100, max_messages=3))
        yield store.append(ALICE, b"old", T0)
        yield store.append(ALICE, b"young", T0 + 50)
        yield store.append(ALICE, b"newest", T0 + 60)
        yield self.assertFailure(store.append(ALICE, b"x", T0 + 60), InboxFull)
        yield store.lease(ALICE, 10, T0 + 60, 10)
        self.assertEqual((yield store.expire(T0 + 100)), 0)
        self.assertEqual((yield store.expire(T0 + 101)), 1)
        self.assertEqual((yield store.sizes())["messages"], 2)
        yield store.append(ALICE, b"room", T0 + 101)
        _, messages = yield store.lease(ALICE, 10, T0 + 101, 10)
        self.assertEqual([b for _, b in messages], [b"young", b"newest", b"room"])

    @inlineCallbacks
    def test_sizes(self):
        """
        The gauges count clients, messages and bytes.
        """
        store = yield self.registered_store(clients=(ALICE, BOB))
        yield store.append(ALICE, b"abc", T0)
        yield store.append(BOB, b"de", T0)
        self.assertEqual((yield store.sizes()), {"clients": 2, "messages": 2, "bytes": 5})

    @inlineCallbacks
    def test_bad_input_changes_nothing(self):
        """
        Appends, registrations and tags of the wrong type fail with a typed
        error and change nothing.
        """
        store = yield self.registered_store()
        before = yield store.sizes()
        yield self.assertFailure(store.append(ALICE, "text", T0), TypeError)
        yield self.assertFailure(store.append("alice", b"x", T0), TypeError)
        yield self.assertFailure(store.register(BOB, "hash", T0), TypeError)
        yield self.assertFailure(store.append(ALICE, b"x", "now"), TypeError)
        yield self.assertFailure(store.expire(None), TypeError)
        yield self.assertFailure(store.check_and_record(b"short"), ValueError)
        yield self.assertFailure(store.check_and_record("x" * 16), ValueError)
        self.assertEqual((yield store.sizes()), before)
        self.assertFalse(store.is_registered(BOB))

    @inlineCallbacks
    def test_replay(self):
        """
        A tag is new once; every later check is a replay.
        """
        store = yield self.open_store()
        self.assertTrue((yield store.check_and_record(tag(1))))
        self.assertFalse((yield store.check_and_record(tag(1))))
        self.assertTrue((yield store.check_and_record(tag(2))))
        self.assertFalse((yield store.check_and_record(tag(1))))

    @inlineCallbacks
    def test_concurrent_duplicates(self):
        """
        Of many copies of one tag checked at once, exactly one passes.
        """
        store = yield self.open_store()
        answers = yield gatherResults([store.check_and_record(tag(7)) for _ in range(20)])
        self.assertEqual(answers.count(True), 1)

    @inlineCallbacks
    def test_many_distinct_tags(self):
        """
        Distinct tags all pass, and each is a replay the second time.
        """
        store = yield self.open_store()
        first = yield gatherResults([store.check_and_record(tag(i)) for i in range(500)])
        second = yield gatherResults([store.check_and_record(tag(i)) for i in range(500)])
        self.assertEqual(first, [True] * 500)
        self.assertEqual(second, [False] * 500)

    @inlineCallbacks
    def test_closed_store_refuses(self):
        """
        After close, appends and tag checks fail with StoreError.
        """
        store = yield self.registered_store()
        yield store.close()
        yield self.assertFailure(store.append(ALICE, b"late", T0), StoreError)
        yield self.assertFailure(store.check_and_record(tag(1)), StoreError)


class _FailingSQLiteFile(SQLiteFile):
    """
    A database file whose next batch write fails as a full disk would.
    """

    fail_next_write = False

    def write_batch(self, messages, tags):
        if self.fail_next_write:
            self.fail_next_write = False
            raise sqlite3.OperationalError("database or disk is full")
        return SQLiteFile.write_batch(self, messages, tags)


class _FailingSQLiteStore(SQLiteStore):
    """A store on a :class:`_FailingSQLiteFile`."""

    def __init__(self, *args, **kwargs):
        SQLiteStore.__init__(self, *args, **kwargs)
        self._file = _FailingSQLiteFile()

    @property
    def fail_next_write(self):
        return self._file.fail_next_write

    @fail_next_write.setter
    def fail_next_write(self, value):
        self._file.fail_next_write = value


class MemoryStoreTests(_StoreContract, TestCase):
    """
    The contract, for the in-memory store.
    """

    def new_store(self, limits):
        return MemoryStore(Clock(), limits)

    def test_fired_at_once(self):
        """
        The memory store's Deferreds have fired when they are returned.
        """
        store = MemoryStore(Clock())
        self.successResultOf(store.start())
        self.successResultOf(store.register(ALICE, token_hash(ALICE), T0))
        self.assertIsNone(self.successResultOf(store.append(ALICE, b"x", T0)))
        self.assertTrue(self.successResultOf(store.check_and_record(tag(1))))
        self.successResultOf(store.close())


class SQLiteStoreTests(_StoreContract, TestCase):
    """
    The contract, for the SQLite store on a real file; plus durability.
    """

    def setUp(self):
        self.path = self.mktemp()

    def new_store(self, limits, **kwargs):
        return SQLiteStore(reactor, self.path, limits, **kwargs)

    @inlineCallbacks
    def reopen(self, store, limits=StoreLimits(), **kwargs):
        yield store.close()
        return (yield self.open_store(limits, **kwargs))

    @inlineCallbacks
    def test_upgrade_from_v1_keeps_leases(self):
        """
        A version 1 file, with its leases in the message rows, opens as
        version 2 with every client, message and lease: a leased message is
        not offered again until its lease lapses, and its lease can be acked.
        """
        db = sqlite3.connect(self.path, isolation_level=None)
        schema.prepare(db, current_version=1)
        db.execute("INSERT INTO clients VALUES (?, ?, ?)", (ALICE, b"\x00" * 32, T0))
        db.executemany(
            "INSERT INTO messages (id, address, received, lease_id, lease_expires, body) VALUES (?, ?, ?, ?, ?, ?)",
            [(1, ALICE, T0, 77, T0 + 30, b"leased"), (2, ALICE, T0, 0, 0, b"free")],
        )
        db.close()
        store = yield self.open_store(StoreLimits())
        db = sqlite3.connect(self.path)
        self.addCleanup(db.close)
        self.assertEqual(schema.stored_version(db), schema.CURRENT_VERSION)
        self.assertEqual(db.execute("SELECT message_id, lease_id FROM leases").fetchall(), [(1, 77)])
        lease_id, messages = yield store.lease(ALICE, 10, T0 + 1, 30)
        self.assertEqual([body for _, body in messages], [b"free"])
        self.assertEqual((yield store.ack(ALICE, 77)), 1)
        self.assertEqual((yield store.sizes())["messages"], 1)

    @inlineCallbacks
    def test_message_ids_reused_without_stale_leases(self):
        """
        Acking the newest message frees its id for the next append; the new
        message with that id is not held by the old lease.
        """
        store = yield self.registered_store()
        yield store.append(ALICE, b"first", T0)
        lease_id, [(first_id, _)] = yield store.lease(ALICE, 10, T0, 30)
        self.assertEqual((yield store.ack(ALICE, lease_id)), 1)
        yield store.append(ALICE, b"second", T0)
        _, messages = yield store.lease(ALICE, 10, T0, 30)
        self.assertEqual([body for _, body in messages], [b"second"])
        yield self.assertFailure(store.ack(ALICE, lease_id), UnknownLease)

    @inlineCallbacks
    def test_forget_leaves_no_lease(self):
        """
        Forgetting a client with leased messages removes their leases: the
        client, registered again, is offered its next message, whatever id
        it gets.
        """
        store = yield self.registered_store()
        yield store.append(ALICE, b"old", T0)
        yield store.lease(ALICE, 10, T0, 300)
        yield store.forget(ALICE)
        yield store.register(ALICE, token_hash(ALICE), T0)
        yield store.append(ALICE, b"new", T0)
        _, messages = yield store.lease(ALICE, 10, T0, 30)
        self.assertEqual([body for _, body in messages], [b"new"])

    @inlineCallbacks
    def test_expiry_leaves_no_lease(self):
        """
        An expired message that was leased takes its lease with it: the
        next message, whatever id it gets, is offered.
        """
        store = yield self.registered_store(StoreLimits(message_ttl=100))
        yield store.append(ALICE, b"old", T0)
        yield store.lease(ALICE, 10, T0, 1000)
        self.assertEqual((yield store.expire(T0 + 101)), 1)
        yield store.append(ALICE, b"new", T0 + 101)
        _, messages = yield store.lease(ALICE, 10, T0 + 101, 30)
        self.assertEqual([body for _, body in messages], [b"new"])

    @inlineCallbacks
    def test_group_commit(self):
        """
        Many concurrent appends are written in far fewer transactions than
        appends, and every one is stored.
        """
        store = yield self.registered_store()
        before = store.transactions
        yield gatherResults([store.append(ALICE, b"m%d" % i, T0) for i in range(2000)])
        commits = store.transactions - before
        self.assertLessEqual(commits, 20)
        self.assertEqual((yield store.sizes())["messages"], 2000)
        store = yield self.reopen(store)
        _, messages = yield store.lease(ALICE, 3000, T0, 30)
        self.assertEqual([b for _, b in messages], [b"m%d" % i for i in range(2000)])

    @inlineCallbacks
    def test_commits_paced(self):
        """
        While appends keep arriving, commits start at most once per
        commit_delay, so a steady trickle does not become an fsync each.
        """
        from twisted.internet.task import deferLater

        store = yield self.registered_store(StoreLimits(commit_delay=0.05))
        before = store.transactions
        appends = []
        started = reactor.seconds()
        # A few every millisecond: some always arrive while the previous
        # commit runs, as under load.
        for tick in range(300):
            for i in range(5):
                appends.append(store.append(ALICE, b"t%d.%d" % (tick, i), T0))
            yield deferLater(reactor, 0.001, lambda: None)
        yield gatherResults(appends)
        elapsed = reactor.seconds() - started
        self.assertLessEqual(store.transactions - before, elapsed / 0.05 + 2)
        self.assertEqual((yield store.sizes())["messages"], 1500)

    @inlineCallbacks
    def test_appends_fire_after_commit(self):
        """
        An append's Deferred fires only once its transaction has committed.
        """
        store = yield self.registered_store()
        before = store.transactions
        d = store.append(ALICE, b"m", T0)
        self.assertNoResult(d)
        yield d
        self.assertEqual(store.transactions, before + 1)

    @inlineCallbacks
    def test_restart_keeps_everything(self):
        """
        Clients, tokens, messages, leases and quotas survive a restart.
        """
        store = yield self.registered_store(StoreLimits(max_messages=3), clients=(ALICE, BOB))
        for i in range(3):
            yield store.append(ALICE, b"m%d" % i, T0)
        lease_id, _ = yield store.lease(ALICE, 1, T0, 30)
        store = yield self.reopen(store, StoreLimits(max_messages=3))
        self.assertTrue(store.is_registered(ALICE))
        self.assertTrue(store.is_registered(BOB))
        self.assertTrue((yield store.authenticate(ALICE, token_hash(ALICE))))
        self.assertEqual((yield store.sizes()), {"clients": 2, "messages": 3, "bytes": 6})
        yield self.assertFailure(store.append(ALICE, b"m3", T0), InboxFull)
        _, free = yield store.lease(ALICE, 10, T0, 30)
        self.assertEqual([b for _, b in free], [b"m1", b"m2"])
        self.assertEqual((yield store.ack(ALICE, lease_id)), 1)

    @inlineCallbacks
    def test_replay_after_restart(self):
        """
        Tags recorded before a restart are replays after it.
        """
        store = yield self.open_store(replay_key_id=b"key-1")
        for i in range(50):
            self.assertTrue((yield store.check_and_record(tag(i))))
        store = yield self.reopen(store, replay_key_id=b"key-1")
        answers = yield gatherResults([store.check_and_record(tag(i)) for i in range(51)])
        self.assertEqual(answers, [False] * 50 + [True])

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
    def test_replay_through_the_table(self):
        """
        With a filter so small that it always says "maybe", answers come
        from the table and are still right, concurrent copies included.
        """
        store = yield self.open_store(replay_filter_bytes=1)
        for i in range(30):
            yield store.check_and_record(tag(i))
        store = yield self.reopen(store, replay_filter_bytes=1)
        old = yield gatherResults([store.check_and_record(tag(i)) for i in range(30)])
        self.assertEqual(old, [False] * 30)
        copies = yield gatherResults([store.check_and_record(tag(99)) for _ in range(10)])
        self.assertEqual(copies.count(True), 1)
        fresh = yield gatherResults([store.check_and_record(tag(100 + i)) for i in range(30)])
        self.assertEqual(fresh, [True] * 30)

    @inlineCallbacks
    def test_tags_commit_with_messages(self):
        """
        A tag recorded before an append is committed with or before it.
        """
        store = yield self.registered_store()
        store.check_and_record(tag(5))
        yield store.append(ALICE, b"m", T0)
        db = sqlite3.connect(self.path)
        self.addCleanup(db.close)
        self.assertEqual(db.execute("SELECT tag FROM replay_tags").fetchall(), [(tag(5),)])

    @inlineCallbacks
    def test_close_flushes_pending(self):
        """
        Close commits appends still waiting for their batch, and fires them.
        """
        slow = StoreLimits(commit_delay=60)
        store = yield self.registered_store(slow)
        pending = [store.append(ALICE, b"m%d" % i, T0) for i in range(5)]
        store.check_and_record(tag(1))
        yield store.close()
        for d in pending:
            self.assertIsNone(self.successResultOf(d))
        store = yield self.open_store(slow)
        _, messages = yield store.lease(ALICE, 10, T0, 30)
        self.assertEqual(len(messages), 5)
        self.assertFalse((yield store.check_and_record(tag(1))))

    @inlineCallbacks
    def test_newer_schema_refused(self):
        """
        A file of a newer schema version is refused with StoreError and
        left byte for byte as it was.
        """
        store = yield self.registered_store()
        yield store.close()
        db = sqlite3.connect(self.path)
        db.execute("UPDATE version SET version = ?", (schema.CURRENT_VERSION + 1,))
        db.commit()
        db.close()
        with open(self.path, "rb") as f:
            before = f.read()
        yield self.assertFailure(self.new_store(StoreLimits()).start(), StoreError)
        with open(self.path, "rb") as f:
            self.assertEqual(f.read(), before)

    @inlineCallbacks
    def test_foreign_file_refused(self):
        """
        A file that is not a nymprov store is refused with StoreError.
        """
        with open(self.path, "wb") as f:
            f.write(b"this is not a database" * 100)
        yield self.assertFailure(self.new_store(StoreLimits()).start(), StoreError)
        other = self.mktemp()
        db = sqlite3.connect(other)
        db.execute("CREATE TABLE unrelated (x)")
        db.close()
        yield self.assertFailure(SQLiteStore(reactor, other).start(), StoreError)

    @inlineCallbacks
    def test_wal_and_integrity(self):
        """
        The file is in WAL mode and passes SQLite's integrity check.
        """
        store = yield self.registered_store()
        yield store.append(ALICE, b"m", T0)
        yield store.close()
        db = sqlite3.connect(self.path)
        self.addCleanup(db.close)
        self.assertEqual(db.execute("PRAGMA journal_mode").fetchone(), ("wal",))
        self.assertEqual(db.execute("PRAGMA integrity_check").fetchone(), ("ok",))

    @inlineCallbacks
    def test_service(self):
        """
        As a service, the store opens on start and, on stop, closes once
        the opening is done.
        """
        store = self.new_store(StoreLimits())
        store.startService()
        self.assertTrue(store.running)
        yield store.stopService()
        self.assertFalse(store.running)
        yield self.assertFailure(store.append(ALICE, b"x", T0), StoreError)
        db = sqlite3.connect(self.path)
        self.addCleanup(db.close)
        self.assertEqual(db.execute("SELECT version FROM version").fetchall(), [(schema.CURRENT_VERSION,)])

    @inlineCallbacks
    def test_failed_batch(self):
        """
        When a batch cannot be written its appends fail with StoreError,
        their quota is freed, and its replay tags are written with the next
        batch.
        """
        store = _FailingSQLiteStore(reactor, self.path, StoreLimits(max_messages=2))
        yield store.start()
        self.addCleanup(store.close)
        yield store.register(ALICE, token_hash(ALICE), T0)
        store.fail_next_write = True
        self.assertTrue((yield store.check_and_record(tag(1))))
        failed = [store.append(ALICE, b"lost%d" % i, T0) for i in range(2)]
        for d in failed:
            yield self.assertFailure(d, StoreError)
        self.flushLoggedErrors(sqlite3.OperationalError, StoreError)
        self.assertEqual((yield store.sizes())["messages"], 0)
        self.assertFalse((yield store.check_and_record(tag(1))))
        yield gatherResults([store.append(ALICE, b"kept%d" % i, T0) for i in range(2)])
        store = yield self.reopen(store)
        _, messages = yield store.lease(ALICE, 10, T0, 30)
        self.assertEqual([b for _, b in messages], [b"kept0", b"kept1"])
        self.assertFalse((yield store.check_and_record(tag(1))))

    def test_bad_arguments(self):
        """
        An unknown synchronous mode or a non-bytes key id is refused at once.
        """
        self.assertRaises(ValueError, SQLiteStore, reactor, self.path, synchronous="OFF; DROP")
        self.assertRaises(TypeError, SQLiteStore, reactor, self.path, replay_key_id="k")
        self.assertFalse(os.path.exists(self.path))
