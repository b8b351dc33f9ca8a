"""
The PostgreSQL store's transactions, each a function of a connection that
runs on a database thread.

Several provider processes run these at once on one database, so every
arbiter is in the database: a unique key for replay tags, the client row's
lock for its quota, ``SKIP LOCKED`` for leases.  Locks are always taken in
one order, so that no two transactions can wait for each other: replay tags
(sorted), then client rows (sorted by address), then message rows.
"""

from nymprov.errors import ClientRevoked, InboxFull, UnknownDestination
from nymprov.storage.tokens import REVOKED_TOKEN_HASH

#: Channel of the notices that a client's token changed or it was forgotten;
#: the payload is ``r`` and the address and new token hash in hex, or ``f``
#: and the address in hex.
CLIENTS_CHANNEL = "nymprov_clients"

#: The channel's name for the schema the tables are in (the first of the
#: connection's search_path): notices are database-wide, and providers in
#: two schemas of one database must not hear each other's.
CHANNEL_SQL = "%s || '_' || md5(current_schema())"


def clients_channel(connection):
    """:returns: the notice channel of the schema ``connection`` works in."""
    return connection.execute(f"SELECT {CHANNEL_SQL}", (CLIENTS_CHANNEL,)).fetchone()[0]

#: Key of the advisory lock that lets one process at a time expire
#: ("nymexp" in ASCII).
EXPIRY_LOCK = 0x6E796D657870


def write_batch(connection, messages, tags, limits):
    """
    Record ``tags`` and append ``messages`` in one transaction.

    :param messages: ``(address, received, body)`` triples in arrival order.
    :param tags: distinct 16-byte replay tags.
    :param limits: the ``StoreLimits`` whose quotas apply.
    :returns: ``(outcomes, new_tags)``: per message ``None`` if stored, else
        the ``UnknownDestination`` or ``InboxFull`` that refused it; and the
        set of tags that no process had recorded before.
    """
    outcomes = []
    new_tags = set()
    with connection.transaction(), connection.cursor() as cursor:
        if tags:
            cursor.execute(
                "INSERT INTO replay_tags (tag) SELECT t FROM unnest(%s::bytea[]) AS t ORDER BY t"
                " ON CONFLICT DO NOTHING RETURNING tag",
                (sorted(tags),),
            )
            new_tags = {bytes(tag) for (tag,) in cursor.fetchall()}
        if not messages:
            return outcomes, new_tags
        addresses = sorted({address for address, _, _ in messages})
        # Holding the client rows until commit keeps the quota exact across
        # processes and keeps a concurrent FORGET from missing these rows.
        cursor.execute(
            "SELECT address, messages, bytes FROM clients WHERE address = ANY(%s)"
            " ORDER BY address FOR NO KEY UPDATE",
            (addresses,),
        )
        usage = {bytes(address): [count, size] for address, count, size in cursor.fetchall()}
        before = {address: tuple(counts) for address, counts in usage.items()}
        rows = ([], [], [], [])
        for address, received, body in messages:
            counts = usage.get(address)
            size = len(body)
            if counts is None:
                outcomes.append(UnknownDestination("not a registered client"))
            elif counts[0] >= limits.max_messages or counts[1] + size > limits.max_bytes:
                outcomes.append(InboxFull("inbox at quota"))
            else:
                counts[0] += 1
                counts[1] += size
                for column, value in zip(rows, (address, received, size, body)):
                    column.append(value)
                outcomes.append(None)
        if rows[0]:
            cursor.execute(
                "INSERT INTO messages (address, received, size, body)"
                " SELECT * FROM unnest(%s::bytea[], %s::float8[], %s::int[], %s::bytea[])",
                rows,
            )
            changed = [address for address in usage if tuple(usage[address]) != before[address]]
            cursor.execute(
                "UPDATE clients SET messages = d.messages, bytes = d.bytes"
                " FROM unnest(%s::bytea[], %s::int[], %s::bigint[]) AS d(address, messages, bytes)"
                " WHERE clients.address = d.address",
                (changed, [usage[a][0] for a in changed], [usage[a][1] for a in changed]),
            )
    return outcomes, new_tags


def register(connection, address, token_hash, now):
    """
    Create the client or replace its token, and tell every process.
    """
    with connection.transaction(), connection.cursor() as cursor:
        # A revoked client's row keeps its hash (a registration that raced
        # the revocation, perhaps in another process, must not undo it).
        cursor.execute(
            "INSERT INTO clients (address, token_hash, registered) VALUES (%s, %s, %s)"
            " ON CONFLICT (address) DO UPDATE"
            " SET token_hash = excluded.token_hash, registered = excluded.registered"
            " WHERE clients.token_hash <> %s OR excluded.token_hash = %s RETURNING address",
            (address, token_hash, now, REVOKED_TOKEN_HASH, REVOKED_TOKEN_HASH),
        )
        if cursor.fetchone() is None:
            raise ClientRevoked("revoked by the operator")
        # Delivered at commit, to every listening process (this one too).
        cursor.execute(f"SELECT pg_notify({CHANNEL_SQL}, %s)",
                       (CLIENTS_CHANNEL, "r" + address.hex() + token_hash.hex()))


def token_hash(connection, address):
    """
    :returns: the stored token hash of ``address``, or ``None``.
    """
    with connection.transaction(), connection.cursor() as cursor:
        row = cursor.execute("SELECT token_hash FROM clients WHERE address = %s", (address,)).fetchone()
    return None if row is None else bytes(row[0])


def registered_addresses(connection):
    """
    :returns: ``(registered, revoked)``: the sets of every registered
        address and of those revoked (their token hash is the revoked one).
    """
    with connection.transaction(), connection.cursor() as cursor:
        rows = cursor.execute("SELECT address, token_hash = %s FROM clients", (REVOKED_TOKEN_HASH,)).fetchall()
    return {bytes(address) for address, _ in rows}, {bytes(address) for address, revoked in rows if revoked}


def lease(connection, address, max_count, now, expires, lease_id):
    """
    Lease at most ``max_count`` free messages of ``address``, oldest first.

    Rows another process is leasing right now are skipped, not waited for:
    two concurrent pulls get disjoint messages.

    :returns: ``(lease_id, [(message_id, body), ...])``, or ``(0, [])``.
    """
    with connection.transaction(), connection.cursor() as cursor:
        cursor.execute(
            "WITH chosen AS (SELECT id FROM messages WHERE address = %s AND lease_expires <= %s"
            "  ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED)"
            " UPDATE messages AS m SET lease_id = %s, lease_expires = %s FROM chosen"
            " WHERE m.id = chosen.id RETURNING m.id, m.body",
            (address, now, max_count, lease_id, expires),
        )
        rows = sorted((message_id, bytes(body)) for message_id, body in cursor.fetchall())
    return (lease_id, rows) if rows else (0, [])


def release(connection, address, lease_id):
    """Free the messages of ``address`` under ``lease_id``; :returns: how many."""
    with connection.transaction(), connection.cursor() as cursor:
        cursor.execute(
            "UPDATE messages SET lease_id = 0, lease_expires = 0 WHERE lease_id = %s AND address = %s",
            (lease_id, address),
        )
        return cursor.rowcount


def ack(connection, address, lease_id):
    """
    Delete the messages of ``address`` under ``lease_id``.

    :returns: how many were deleted.
    """
    with connection.transaction(), connection.cursor() as cursor:
        if cursor.execute(
            "SELECT 1 FROM clients WHERE address = %s FOR NO KEY UPDATE", (address,)
        ).fetchone() is None:
            return 0
        cursor.execute(
            "WITH gone AS (DELETE FROM messages WHERE lease_id = %s AND address = %s RETURNING size)"
            " SELECT count(*), coalesce(sum(size), 0) FROM gone",
            (lease_id, address),
        )
        count, size = cursor.fetchone()
        if count:
            cursor.execute(
                "UPDATE clients SET messages = messages - %s, bytes = bytes - %s WHERE address = %s",
                (count, size, address),
            )
    return count


def forget(connection, address):
    """
    Delete the client, its token and its inbox, and tell every process.
    """
    with connection.transaction(), connection.cursor() as cursor:
        # The client row first: a batch that holds it commits its messages
        # before this statement reads which messages to delete.
        cursor.execute("SELECT 1 FROM clients WHERE address = %s FOR UPDATE", (address,))
        cursor.execute("DELETE FROM messages WHERE address = %s", (address,))
        cursor.execute("DELETE FROM clients WHERE address = %s", (address,))
        cursor.execute(f"SELECT pg_notify({CHANNEL_SQL}, %s)", (CLIENTS_CHANNEL, "f" + address.hex()))


def expire(connection, oldest_kept):
    """
    Delete messages received before ``oldest_kept``.  Lapsed leases need no
    sweep: a lease is free once its expiry is past.

    :returns: how many were deleted; 0 if another process is expiring now.
    """
    with connection.transaction(), connection.cursor() as cursor:
        if not cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", (EXPIRY_LOCK,)).fetchone()[0]:
            return 0
        cursor.execute(
            "SELECT address FROM clients WHERE address IN"
            " (SELECT DISTINCT address FROM messages WHERE received < %s)"
            " ORDER BY address FOR NO KEY UPDATE",
            (oldest_kept,),
        )
        cursor.execute(
            "WITH gone AS (DELETE FROM messages WHERE received < %s RETURNING address, size),"
            " per_client AS (SELECT address, count(*) AS n, sum(size) AS b FROM gone GROUP BY address),"
            " counted AS (UPDATE clients SET messages = messages - per_client.n, bytes = bytes - per_client.b"
            "  FROM per_client WHERE clients.address = per_client.address)"
            " SELECT coalesce(sum(n), 0) FROM per_client",
            (oldest_kept,),
        )
        return int(cursor.fetchone()[0])


def sizes(connection):
    """
    :returns: the gauges of ``IInboxStore.sizes``, for the whole database.
    """
    with connection.transaction(), connection.cursor() as cursor:
        clients, messages, size = cursor.execute(
            "SELECT count(*), coalesce(sum(messages), 0), coalesce(sum(bytes), 0) FROM clients"
        ).fetchone()
    return {"clients": clients, "messages": int(messages), "bytes": int(size)}


def tag_recorded(connection, tag):
    """
    :returns: whether ``tag`` is in the table.
    """
    with connection.transaction(), connection.cursor() as cursor:
        return cursor.execute("SELECT 1 FROM replay_tags WHERE tag = %s", (tag,)).fetchone() is not None
