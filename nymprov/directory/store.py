"""
The directory's descriptors on disk: one SQLite table, one row per node.

Plain ``sqlite3`` on the reactor thread: a write is one small row per node
per publication (a few a minute per node), far below what would need a
thread, and reads come from memory (:mod:`nymprov.directory.registry`).
"""

import sqlite3

from nymprov.errors import StoreError

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value
);
-- The latest accepted descriptor of each node: its signed envelope as the
-- node sent it (so it can be checked again), the timestamp it carries and
-- when the directory received it (which decides its expiry).
CREATE TABLE IF NOT EXISTS descriptors (
    identity BLOB PRIMARY KEY,
    contents BLOB NOT NULL,
    timestamp INTEGER NOT NULL,
    received REAL NOT NULL
);
"""


class DescriptorStore:
    """
    :param str path: the SQLite file, or ``":memory:"``.
    :raises StoreError: if the file holds a newer schema.
    """

    def __init__(self, path):
        try:
            self._db = sqlite3.connect(path, isolation_level=None)
            self._db.executescript(_SCHEMA)
            row = self._db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        except sqlite3.DatabaseError as e:
            raise StoreError(f"{path}: {e}") from None
        if row is None:
            self._db.execute("INSERT INTO meta (key, value) VALUES ('schema', ?)", (SCHEMA_VERSION,))
        elif row[0] != SCHEMA_VERSION:
            raise StoreError(f"{path}: directory schema {row[0]!r}, this version reads {SCHEMA_VERSION}")

    def load(self):
        """:returns: every row as ``(identity, contents, timestamp, received)``."""
        return self._db.execute("SELECT identity, contents, timestamp, received FROM descriptors").fetchall()

    def put(self, identity, contents, timestamp, received):
        """Replace the node's descriptor (committed when this returns)."""
        self._db.execute(
            "INSERT OR REPLACE INTO descriptors (identity, contents, timestamp, received) VALUES (?, ?, ?, ?)",
            (identity, contents, timestamp, received),
        )

    def delete(self, identities):
        """Delete the descriptors of ``identities``."""
        self._db.executemany("DELETE FROM descriptors WHERE identity = ?", [(i,) for i in identities])

    def close(self):
        self._db.close()
