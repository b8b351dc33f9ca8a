"""
Creating, checking and upgrading the SQLite store's versioned schema.

Every function here runs on the store's database thread.
"""

import sqlite3

from nymprov.errors import StoreError
from nymprov.storage.scripts import load_scripts

CURRENT_VERSION = 2

#: Page size of a new file.  A stored message is about 2 KB, so a 4 KiB page
#: holds one row and every append splits a page; with 16 KiB pages the
#: writer thread measured about a third less CPU per appended row (median
#: of three interleaved runs of 20,000 rows: 19 against 29 µs).  Only an
#: empty file takes it; older files keep their page size.
NEW_FILE_PAGE_SIZE = 16384


_SCRIPTS = load_scripts("nymprov.storage")


def read_script(name):
    """
    :returns: the text of ``schema/<name>``, shipped as package data.
    :raises KeyError: for a script that is not there.
    """
    return _SCRIPTS[name]


def _run_script(db, text):
    """
    Run ``text`` in one transaction, so that a failure leaves the file as
    it was.  ``db`` must be in autocommit mode (``isolation_level=None``).
    """
    try:
        db.executescript("BEGIN IMMEDIATE;\n" + text + "\nCOMMIT;")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def stored_version(db):
    """
    :returns: the schema version of the file, or ``None`` if it is empty.
    :raises StoreError: if the file holds something that is not a nymprov
        store, or its version table is malformed.
    """
    tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not tables:
        return None
    if "version" not in tables:
        raise StoreError("not a nymprov store: no version table")
    rows = db.execute("SELECT `version` FROM `version`").fetchall()
    if len(rows) != 1 or type(rows[0][0]) is not int:
        raise StoreError(f"malformed version table: {rows!r}")
    return rows[0][0]


def prepare(db, current_version=CURRENT_VERSION, read=read_script):
    """
    Create the schema in an empty file (``v1.sql``), and bring it, or an
    older file, up to ``current_version`` one step at a time with
    ``upgrade-to-vN.sql`` scripts, each in its own transaction.

    :param current_version: the version this code understands; a parameter
        so that tests can make older files and try upgrades not yet written.
    :param read: reads a script by name.
    :raises StoreError: for a newer or unknown version; the file is then
        left untouched.
    """
    try:
        version = stored_version(db)
        if version is None:
            # A new file is made as version 1 and upgraded like any other,
            # so new and upgraded files are the same and every upgrade
            # script runs on every new store.
            db.execute(f"PRAGMA page_size = {NEW_FILE_PAGE_SIZE}")
            _run_script(db, read("v1.sql"))
            version = 1
        if version > current_version:
            raise StoreError(f"schema version {version} is newer than {current_version}")
        if version < 1:
            raise StoreError(f"unknown schema version {version}")
        while version < current_version:
            _run_script(db, read(f"upgrade-to-v{version + 1}.sql"))
            upgraded = stored_version(db)
            if upgraded != version + 1:
                raise StoreError(f"upgrade to v{version + 1} left version {upgraded}")
            version = upgraded
        return version
    except sqlite3.Error as error:
        raise StoreError(f"cannot read the store: {error}") from error
