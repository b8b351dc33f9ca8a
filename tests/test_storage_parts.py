"""
Tests for the stores' parts: limits, the replay tag filter, the schema.
"""

import dataclasses
import os
import sqlite3

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from nymprov.errors import StoreError
from nymprov.storage import schema
from nymprov.storage.bloom import TagFilter
from nymprov.storage.limits import StoreLimits

tags = st.binary(min_size=16, max_size=16)
LIMIT_FIELDS = [field.name for field in dataclasses.fields(StoreLimits)]


class StoreLimitsTests(SynchronousTestCase):
    """
    ``StoreLimits`` holds sane values only.
    """

    def test_defaults(self):
        """
        The defaults are the documented ones.
        """
        limits = StoreLimits()
        self.assertEqual(
            (limits.max_messages, limits.max_bytes, limits.message_ttl, limits.slot_size),
            (10_000, 64 * 1024 * 1024, 7 * 86400, 2048),
        )
        self.assertEqual((limits.commit_batch, limits.commit_delay), (512, 0.03))

    def test_frozen(self):
        """
        Limits cannot be changed after construction.
        """
        self.assertRaises(dataclasses.FrozenInstanceError, setattr, StoreLimits(), "max_messages", 1)

    @settings(max_examples=60)
    @given(
        st.sampled_from(LIMIT_FIELDS),
        st.one_of(
            st.integers(max_value=-1),
            st.just(float("nan")),
            st.just(float("inf")),
            st.text(max_size=3),
            st.none(),
            st.just(True),
        ),
    )
    def test_invalid_value_names_field(self, name, value):
        """
        A negative, non-finite or non-numeric value raises ValueError
        naming the field.
        """
        with self.assertRaises(ValueError) as caught:
            StoreLimits(**{name: value})
        self.assertIn(name, str(caught.exception))

    def test_zero(self):
        """
        Zero is refused for the sizes and the TTL, allowed for the delay.
        """
        for name in ("max_messages", "max_bytes", "slot_size", "commit_batch", "message_ttl"):
            self.assertRaises(ValueError, StoreLimits, **{name: 0})
        self.assertEqual(StoreLimits(commit_delay=0).commit_delay, 0)
        self.assertRaises(ValueError, StoreLimits, max_messages=1.5)


class TagFilterTests(SynchronousTestCase):
    """
    The Bloom filter never forgets a tag and rarely imagines one.
    """

    @settings(max_examples=50)
    @given(st.lists(tags, max_size=200), st.integers(1, 4096), st.integers(1, 4))
    def test_no_false_negatives(self, added, size, hash_count):
        """
        Every tag added is reported as maybe seen, whatever the size.
        """
        tag_filter = TagFilter(size, hash_count)
        for tag in added:
            tag_filter.add(tag)
        for tag in added:
            self.assertIn(tag, tag_filter)

    @settings(max_examples=50)
    @given(tags)
    def test_empty_filter(self, tag):
        """
        An empty filter has seen nothing, and the first add reports the tag
        as certainly new; the second as maybe seen.
        """
        tag_filter = TagFilter(1024)
        self.assertNotIn(tag, tag_filter)
        self.assertTrue(tag_filter.add(tag))
        self.assertFalse(tag_filter.add(tag))

    def test_false_positive_rate(self):
        """
        With 20,000 tags in 64 KiB and four indices, fewer than 1% of
        20,000 other random tags are reported as maybe seen (theory: 0.24%).
        """
        tag_filter = TagFilter(64 * 1024, 4)
        for _ in range(20_000):
            tag_filter.add(os.urandom(16))
        false_positives = sum(os.urandom(16) in tag_filter for _ in range(20_000))
        self.assertLess(false_positives, 200)

    def test_clear(self):
        """
        A cleared filter has seen nothing.
        """
        tag_filter = TagFilter(1024)
        tag_filter.add(b"t" * 16)
        tag_filter.clear()
        self.assertNotIn(b"t" * 16, tag_filter)
        self.assertEqual(tag_filter.count, 0)

    def test_bad_tags_and_sizes(self):
        """
        Tags of another length or type, and impossible sizes, raise
        ValueError.
        """
        tag_filter = TagFilter(1024)
        for bad in (b"", b"x" * 15, b"x" * 17, "x" * 16, None):
            self.assertRaises(ValueError, tag_filter.add, bad)
            self.assertRaises(ValueError, tag_filter.__contains__, bad)
        for size, count in ((0, 4), (-1, 4), (2**30, 4), (1024, 0), (1024, 5)):
            self.assertRaises(ValueError, TagFilter, size, count)


class SchemaTests(SynchronousTestCase):
    """
    The schema is created, checked and upgraded step by step.
    """

    def setUp(self):
        self.db = sqlite3.connect(self.mktemp(), isolation_level=None)
        self.addCleanup(self.db.close)

    def test_create(self):
        """
        An empty file gets the current schema and its version row.
        """
        self.assertEqual(schema.prepare(self.db), schema.CURRENT_VERSION)
        self.assertEqual(schema.stored_version(self.db), schema.CURRENT_VERSION)
        self.assertEqual(schema.prepare(self.db), schema.CURRENT_VERSION)

    def test_new_file_page_size(self):
        """
        A new file gets the larger page size; a file created with another
        keeps it when opened again.
        """
        schema.prepare(self.db)
        self.assertEqual(self.db.execute("PRAGMA page_size").fetchone()[0], schema.NEW_FILE_PAGE_SIZE)
        other = sqlite3.connect(self.mktemp(), isolation_level=None)
        self.addCleanup(other.close)
        other.execute("PRAGMA page_size = 4096")
        other.executescript(schema.read_script("v1.sql"))
        self.assertEqual(schema.prepare(other), schema.CURRENT_VERSION)
        self.assertEqual(other.execute("PRAGMA page_size").fetchone()[0], 4096)

    def test_upgrade_steps(self):
        """
        An older file is upgraded one script at a time, in order.
        """
        schema.prepare(self.db, current_version=1)
        scripts = {
            "upgrade-to-v2.sql": "ALTER TABLE clients ADD COLUMN note TEXT; UPDATE version SET version = 2;",
            "upgrade-to-v3.sql": "CREATE TABLE extra (x); UPDATE version SET version = 3;",
        }
        read = []

        def reader(name):
            read.append(name)
            return scripts[name]

        self.assertEqual(schema.prepare(self.db, current_version=3, read=reader), 3)
        self.assertEqual(read, ["upgrade-to-v2.sql", "upgrade-to-v3.sql"])
        self.db.execute("SELECT note FROM clients")

    def test_failed_upgrade_rolls_back(self):
        """
        An upgrade script that fails leaves the file at its old version.
        """
        schema.prepare(self.db, current_version=1)
        broken = "ALTER TABLE clients ADD COLUMN note TEXT; UPDATE nowhere SET x = 1;"
        self.assertRaises(StoreError, schema.prepare, self.db, 2, lambda name: broken)
        self.assertEqual(schema.stored_version(self.db), 1)
        self.assertRaises(sqlite3.OperationalError, self.db.execute, "SELECT note FROM clients")

    def test_upgrade_must_set_version(self):
        """
        An upgrade script that forgets to bump the version is an error.
        """
        schema.prepare(self.db, current_version=1)
        self.assertRaises(StoreError, schema.prepare, self.db, 2, lambda name: "CREATE TABLE t (x);")

    def test_malformed_version(self):
        """
        A version table without exactly one integer row is refused.
        """
        schema.prepare(self.db)
        self.db.execute("INSERT INTO version VALUES (1)")
        self.assertRaises(StoreError, schema.prepare, self.db)
        self.db.execute("DELETE FROM version")
        self.db.execute("INSERT INTO version VALUES ('one')")
        self.assertRaises(StoreError, schema.prepare, self.db)
        self.db.execute("UPDATE version SET version = 0")
        self.assertRaises(StoreError, schema.prepare, self.db)


class InsertRowsTests(SynchronousTestCase):
    """The SQLite store's multi-row INSERTs."""

    def test_every_row_in_few_shapes(self):
        """
        Any number of rows is inserted whole, with statements of
        power-of-two row counts only, so few compiled statements exist.
        """
        from nymprov.storage.sqlite_file import _ROWS_PER_INSERT, _insert_rows

        db = sqlite3.connect(":memory:", isolation_level=None)
        self.addCleanup(db.close)
        db.execute("CREATE TABLE t (a, b)")
        statements = []
        db.set_trace_callback(statements.append)
        total = 0
        for count in (0, 1, 2, 3, 7, 127, 128, 129, 255, 300, 513):
            _insert_rows(db, "INSERT INTO t (a, b)", 2, [(total + i, b"x") for i in range(count)])
            total += count
        self.assertEqual(db.execute("SELECT count(*), count(DISTINCT a) FROM t").fetchone(), (total, total))
        shapes = {s.count("), (") + 1 for s in statements if s.startswith("INSERT")}
        self.assertLessEqual(shapes, set(_ROWS_PER_INSERT))
        self.assertIn(128, shapes)


class TokenCheckTests(SynchronousTestCase):
    """AUTH does the same work for an unknown address as for a known one."""

    def test_one_comparison_either_way(self):
        """
        An unknown address gets one constant-time comparison, as a known
        one with a wrong token does, and never matches.
        """
        from nymprov.storage import tokens
        from nymprov.storage.memory import MemoryStore

        compared = []
        real = tokens.hmac.compare_digest
        self.patch(tokens.hmac, "compare_digest", lambda a, b: compared.append(len(a)) or real(a, b))
        store = MemoryStore(Clock())
        self.successResultOf(store.register(b"k" * 32, b"h" * 32, 0))
        self.assertFalse(self.successResultOf(store.authenticate(b"u" * 32, b"h" * 32)))
        self.assertFalse(self.successResultOf(store.authenticate(b"k" * 32, b"x" * 32)))
        self.assertTrue(self.successResultOf(store.authenticate(b"k" * 32, b"h" * 32)))
        self.assertEqual(compared, [32, 32, 32])
        self.assertFalse(tokens.token_matches(None, bytes(32)))
