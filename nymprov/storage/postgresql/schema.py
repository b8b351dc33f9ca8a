"""
Creating, checking and upgrading the PostgreSQL store's versioned schema.

Every function here runs on a database thread, with a psycopg connection.
Several provider processes may start at once against one database: the
whole check-create-upgrade runs in one transaction under an advisory lock,
so exactly one of them creates or upgrades, and the others find it done.
"""

from nymprov.errors import StoreError
from nymprov.storage.scripts import load_scripts

CURRENT_VERSION = 1

#: Key of the transaction-level advisory lock taken while the schema is
#: prepared (an arbitrary constant: "nymprov" in ASCII).
SCHEMA_LOCK = 0x6E796D70726F76


_SCRIPTS = load_scripts("nymprov.storage.postgresql")


def read_script(name):
    """
    :returns: the text of ``schema/<name>``, shipped as package data.
    :raises KeyError: for a script that is not there.
    """
    return _SCRIPTS[name]


def stored_version(cursor):
    """
    :returns: the schema version in the connection's first search-path
        schema, or ``None`` if it holds no tables.
    :raises StoreError: if it holds tables but no well-formed version table.
    """
    cursor.execute(
        "SELECT table_name FROM information_schema.tables"
        " WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'"
    )
    tables = {name for (name,) in cursor.fetchall()}
    if not tables:
        return None
    if "version" not in tables:
        raise StoreError("not a nymprov store: tables but no version table")
    cursor.execute("SELECT version FROM version")
    rows = cursor.fetchall()
    if len(rows) != 1 or type(rows[0][0]) is not int:
        raise StoreError(f"malformed version table: {rows!r}")
    return rows[0][0]


def prepare(connection, replay_key_id, current_version=CURRENT_VERSION, read=read_script):
    """
    Create the schema where there is none (``v1.sql``), bring an older one
    up to ``current_version`` with ``upgrade-to-vN.sql`` scripts, and clear
    the replay tags if they belong to another Sphinx key; all in one
    transaction, so a failure leaves the database as it was.

    :param connection: a psycopg connection, not in a transaction.
    :param bytes replay_key_id: the id of the node's current Sphinx key.
    :param current_version: the version this code understands; a parameter
        so that tests can make older schemas and try upgrades.
    :param read: reads a script by name.
    :returns: ``(version, tags_cleared)``.
    :raises StoreError: for a newer or unknown version, or a database that
        is not a nymprov store.
    """
    with connection.transaction(), connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
        if cursor.execute("SELECT current_schema()").fetchone()[0] is None:
            raise StoreError("no schema to create tables in: check the search_path")
        version = stored_version(cursor)
        if version is None:
            # A new database is made as version 1 and upgraded like any
            # other, so that every upgrade script runs on every new store.
            cursor.execute(read("v1.sql"))
            version = 1
        if version > current_version:
            raise StoreError(f"schema version {version} is newer than {current_version}")
        if version < 1:
            raise StoreError(f"unknown schema version {version}")
        while version < current_version:
            cursor.execute(read(f"upgrade-to-v{version + 1}.sql"))
            upgraded = stored_version(cursor)
            if upgraded != version + 1:
                raise StoreError(f"upgrade to v{version + 1} left version {upgraded}")
            version = upgraded
        return version, _check_replay_key(cursor, replay_key_id)


def _check_replay_key(cursor, replay_key_id):
    row = cursor.execute("SELECT value FROM meta WHERE key = 'replay_key_id'").fetchone()
    if row is not None and bytes(row[0]) == replay_key_id:
        return False
    # Tags belong to one Sphinx key: a new key starts with none.
    cursor.execute("DELETE FROM replay_tags")
    cursor.execute(
        "INSERT INTO meta (key, value) VALUES ('replay_key_id', %s)"
        " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (replay_key_id,),
    )
    return row is not None
