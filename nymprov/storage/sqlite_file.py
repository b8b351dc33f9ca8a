"""
The SQLite file behind :class:`nymprov.storage.sqlite.SQLiteStore`: the
connection and the queries, run on the store's DB thread.
"""

import functools
import itertools
import os
import sqlite3

from twisted.logger import Logger

from nymprov.errors import ClientRevoked, StoreError
from nymprov.storage import schema
from nymprov.storage.bloom import TAG_SIZE
from nymprov.storage.tokens import REVOKED_TOKEN_HASH

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


class SQLiteFile:
    """
    The DB-thread half of :class:`SQLiteStore`: the connection and every
    query.  Each method runs on the store's one DB thread and takes all its
    inputs as arguments; nothing here touches the reactor.

    :ivar transactions: how many write transactions have committed.
    """

    log = Logger(namespace="nymprov.storage.sqlite")

    def __init__(self):
        self.db = None
        self.transactions = 0

    def open(self, path, synchronous, replay_key_id, tag_filter):
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
            self.db = db
            self.check_replay_key(replay_key_id)
            for (tag,) in db.execute("SELECT tag FROM replay_tags"):
                if type(tag) is bytes and len(tag) == TAG_SIZE:
                    tag_filter.add(tag)
            usage = db.execute(
                "SELECT c.address, count(m.id), coalesce(sum(length(m.body)), 0)"
                " FROM clients AS c LEFT JOIN messages AS m ON m.address = c.address"
                " GROUP BY c.address"
            ).fetchall()
            revoked = {address for (address,) in db.execute(
                "SELECT address FROM clients WHERE token_hash = ?", (REVOKED_TOKEN_HASH,))}
            return usage, revoked
        except BaseException as error:
            self.db = None
            db.close()
            if isinstance(error, sqlite3.Error):
                raise StoreError(f"cannot open the store: {error}") from error
            raise

    def check_replay_key(self, replay_key_id):
        row = self.db.execute("SELECT value FROM meta WHERE key = 'replay_key_id'").fetchone()
        if row is not None and row[0] == replay_key_id:
            return
        # Tags belong to one Sphinx key: a new key starts with none.
        with self.transaction():
            self.db.execute("DELETE FROM replay_tags")
            self.db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('replay_key_id', ?)",
                (replay_key_id,),
            )
        if row is not None:
            self.log.info("replay key changed: stored replay tags cleared")

    def close(self):
        db, self.db = self.db, None
        if db is not None:
            db.close()

    def transaction(self):
        return _Transaction(self)

    def write_batch(self, messages, tags):
        with self.transaction():
            _insert_rows(self.db, "INSERT INTO messages (address, received, body)", 3, messages)
            _insert_rows(self.db, "INSERT OR IGNORE INTO replay_tags (tag)", 1, [(tag,) for tag in tags])

    def register(self, address, token_hash, now):
        with self.transaction():
            # A revoked client's row keeps its hash (a registration that
            # raced the revocation must not undo it).
            cursor = self.db.execute(
                "INSERT INTO clients (address, token_hash, registered) VALUES (?, ?, ?)"
                " ON CONFLICT (address) DO UPDATE"
                " SET token_hash = excluded.token_hash, registered = excluded.registered"
                " WHERE clients.token_hash != ? OR excluded.token_hash = ?",
                (address, token_hash, now, REVOKED_TOKEN_HASH, REVOKED_TOKEN_HASH),
            )
            if cursor.rowcount == 0:
                raise ClientRevoked("revoked by the operator")

    def token_hash(self, address):
        row = self.db.execute("SELECT token_hash FROM clients WHERE address = ?", (address,)).fetchone()
        return None if row is None else row[0]

    def lease(self, address, max_count, now, expires, lease_id):
        with self.transaction():
            rows = self.db.execute(_FREE_MESSAGES, (address, now, max_count)).fetchall()
            if not rows:
                return (0, [])
            # A row of its own per leased message: the message rows (and
            # their pages) are not rewritten.
            _insert_rows(
                self.db,
                "INSERT OR REPLACE INTO leases (message_id, lease_id, expires)",
                3,
                [(message_id, lease_id, expires) for message_id, _ in rows],
            )
        return (lease_id, rows)

    def release(self, address, lease_id):
        with self.transaction():
            return self.db.execute(
                "DELETE FROM leases WHERE lease_id = ?"
                " AND message_id IN (SELECT id FROM messages WHERE address = ?)",
                (lease_id, address),
            ).rowcount

    def ack(self, address, lease_id):
        with self.transaction():
            count, size = self.db.execute(
                "SELECT count(*), coalesce(sum(length(m.body)), 0) FROM leases AS l"
                " JOIN messages AS m ON m.id = l.message_id WHERE l.lease_id = ? AND m.address = ?",
                (lease_id, address),
            ).fetchone()
            if count:
                # The schema's trigger deletes their lease rows.
                self.db.execute(
                    "DELETE FROM messages WHERE address = ?"
                    " AND id IN (SELECT message_id FROM leases WHERE lease_id = ?)",
                    (address, lease_id),
                )
        return (count, size)

    def forget(self, address):
        with self.transaction():
            self.db.execute("DELETE FROM messages WHERE address = ?", (address,))
            self.db.execute("DELETE FROM clients WHERE address = ?", (address,))

    def expire(self, oldest_kept, now):
        with self.transaction():
            per_client = self.db.execute(
                "SELECT address, count(*), sum(length(body)) FROM messages"
                " WHERE received < ? GROUP BY address",
                (oldest_kept,),
            ).fetchall()
            if per_client:
                self.db.execute("DELETE FROM messages WHERE received < ?", (oldest_kept,))
            self.db.execute("DELETE FROM leases WHERE expires <= ?", (now,))
        return per_client

    def tag_stored(self, tag):
        return self.db.execute("SELECT 1 FROM replay_tags WHERE tag = ?", (tag,)).fetchone() is not None


class _Transaction:
    """
    ``BEGIN IMMEDIATE`` ... ``COMMIT`` on the DB thread, rolled back on error,
    and counted in ``transactions`` once committed.
    """

    def __init__(self, file):
        self._file = file

    def __enter__(self):
        self._file.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind, error, traceback):
        db = self._file.db
        if kind is None:
            db.execute("COMMIT")
            self._file.transactions += 1
        elif db.in_transaction:
            db.execute("ROLLBACK")
        return False
