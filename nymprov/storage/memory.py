"""
An inbox store and replay cache held in memory, for tests and throwaway nodes.
"""

import itertools

from twisted.application.service import Service
from twisted.internet.defer import fail, succeed
from zope.interface import implementer

from nymprov.errors import ClientRevoked, StoreError, UnknownLease
from nymprov.interfaces import IInboxStore, IReplayCache
from nymprov.storage.bloom import TAG_SIZE
from nymprov.storage.leases import check_lease_id, check_lease_request, new_lease_id
from nymprov.storage.limits import StoreLimits
from nymprov.storage.quota import InboxQuotas, check_bytes, check_time
from nymprov.storage.tokens import REVOKED_TOKEN_HASH, token_matches


class _Stored:
    """One message in an inbox, with its lease."""

    __slots__ = ("body", "received", "lease_id", "lease_expires")

    def __init__(self, body, received):
        self.body = body
        self.received = received
        self.lease_id = 0
        self.lease_expires = 0.0


@implementer(IInboxStore, IReplayCache)
class MemoryStore(Service):
    """
    The same semantics as the SQLite store, without durability: every
    Deferred it returns has already fired.
    """

    name = "memory-store"

    def __init__(self, clock, limits=StoreLimits()):
        self._clock = clock
        self._limits = limits
        self._quotas = InboxQuotas(limits)
        self._tokens = {}
        # address -> {message_id: _Stored}; dicts keep insertion order, so
        # iteration is oldest first.
        self._inboxes = {}
        self._message_ids = itertools.count(1)
        self._tags = set()
        self._closed = False

    def _run(self, operation, *args):
        """
        Call ``operation`` and wrap its result or error in a fired Deferred.
        """
        if self._closed:
            return fail(StoreError("store is closed"))
        try:
            return succeed(operation(*args))
        except Exception as error:
            return fail(error)

    def startService(self):
        Service.startService(self)
        return self.start()

    def stopService(self):
        Service.stopService(self)
        return self.close()

    def client_usage(self):
        """
        :returns: ``[(address, messages, bytes)]`` of every registered
            client, by address, as accounted now (for the admin commands).
        """
        return self._quotas.usage()

    @property
    def replay_tag_count(self):
        """How many replay tags are held (for the gauges)."""
        return len(self._tags)

    @property
    def state(self):
        """``open`` or ``closed``: whether the store takes requests."""
        return "closed" if self._closed else "open"

    def start(self):
        """IInboxStore API"""
        return succeed(None)

    def close(self):
        """IInboxStore API"""
        self._closed = True
        return succeed(None)

    def register(self, address, token_hash, now):
        """IInboxStore API"""
        return self._run(self._register, address, token_hash, now)

    def _register(self, address, token_hash, now):
        check_time(now)
        check_bytes("address", address)
        check_bytes("token_hash", token_hash)
        if self._tokens.get(address) == REVOKED_TOKEN_HASH != token_hash:
            raise ClientRevoked("revoked by the operator")
        self._tokens[address] = token_hash
        self._quotas.add_client(address)
        self._inboxes.setdefault(address, {})

    def authenticate(self, address, token_hash):
        """IInboxStore API"""
        return self._run(self._authenticate, address, token_hash)

    def _authenticate(self, address, token_hash):
        check_bytes("token_hash", token_hash)
        stored = self._tokens.get(address)
        return token_matches(stored, token_hash)

    def is_registered(self, address):
        """IInboxStore API"""
        return address in self._quotas

    def is_revoked(self, address):
        """IInboxStore API"""
        return self._tokens.get(address) == REVOKED_TOKEN_HASH

    def append(self, address, message, now):
        """IInboxStore API"""
        return self._run(self._append, address, message, now)

    def _append(self, address, message, now):
        check_time(now)
        self._quotas.reserve(address, message)
        self._inboxes[address][next(self._message_ids)] = _Stored(message, now)

    def lease(self, address, max_count, now, lease_seconds):
        """IInboxStore API"""
        return self._run(self._lease, address, max_count, now, lease_seconds)

    def _lease(self, address, max_count, now, lease_seconds):
        check_lease_request(max_count, lease_seconds)
        check_time(now)
        inbox = self._inboxes.get(address, {})
        free = (
            (message_id, stored)
            for message_id, stored in inbox.items()
            if stored.lease_id == 0 or stored.lease_expires <= now
        )
        chosen = list(itertools.islice(free, max_count))
        if not chosen:
            return (0, [])
        lease_id = new_lease_id()
        for _, stored in chosen:
            stored.lease_id = lease_id
            stored.lease_expires = now + lease_seconds
        return (lease_id, [(message_id, stored.body) for message_id, stored in chosen])

    def ack(self, address, lease_id):
        """IInboxStore API"""
        return self._run(self._ack, address, lease_id)

    def _ack(self, address, lease_id):
        check_lease_id(lease_id)
        inbox = self._inboxes.get(address, {})
        doomed = [mid for mid, stored in inbox.items() if stored.lease_id == lease_id]
        if not doomed:
            raise UnknownLease("no such lease")
        size = sum(len(inbox[mid].body) for mid in doomed)
        for message_id in doomed:
            del inbox[message_id]
        self._quotas.release(address, len(doomed), size)
        return len(doomed)

    def release(self, address, lease_id):
        """IInboxStore API"""
        return self._run(self._release, address, lease_id)

    def _release(self, address, lease_id):
        check_lease_id(lease_id)
        held = [s for s in self._inboxes.get(address, {}).values() if s.lease_id == lease_id]
        for stored in held:
            stored.lease_id = 0
            stored.lease_expires = 0
        return len(held)

    def forget(self, address):
        """IInboxStore API"""
        return self._run(self._forget, address)

    def _forget(self, address):
        self._tokens.pop(address, None)
        self._inboxes.pop(address, None)
        self._quotas.remove_client(address)

    def expire(self, now):
        """IInboxStore API"""
        return self._run(self._expire, now)

    def _expire(self, now):
        check_time(now)
        oldest_kept = now - self._limits.message_ttl
        deleted = 0
        for address, inbox in self._inboxes.items():
            doomed = [mid for mid, stored in inbox.items() if stored.received < oldest_kept]
            size = sum(len(inbox[mid].body) for mid in doomed)
            for message_id in doomed:
                del inbox[message_id]
            self._quotas.release(address, len(doomed), size)
            deleted += len(doomed)
            for stored in inbox.values():
                if stored.lease_id and stored.lease_expires <= now:
                    stored.lease_id, stored.lease_expires = 0, 0.0
        return deleted

    def sizes(self):
        """IInboxStore API"""
        return succeed(self._quotas.sizes())

    def check_and_record(self, tag):
        """IReplayCache API"""
        return self._run(self._check_and_record, tag)

    def _check_and_record(self, tag):
        if type(tag) is not bytes or len(tag) != TAG_SIZE:
            raise ValueError("a replay tag is 16 bytes")
        if tag in self._tags:
            return False
        self._tags.add(tag)
        return True
