"""
Replay tags scoped per Sphinx key: one replay store per live key, so that
retiring a key deletes its tags in one step (a file removed), and a restart
reads only the live keys' tags however many epochs lie behind.
"""

import os

from twisted.internet.defer import Deferred, DeferredList, fail, inlineCallbacks, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from nymprov.interfaces import IKeyedReplayCache, IReplayCache
from nymprov.storage.limits import StoreLimits

_SUFFIXES = ("", "-wal", "-shm", "-journal")


@implementer(IKeyedReplayCache)
class PerKeyReplayCache:
    """
    :param make_store: ``make_store(key_id)`` returns a started-on-demand
        replay store (``start()``, ``close()``, ``check_and_record(tag)``).
    :param paths: ``paths(key_id)`` returns the file its store writes, or
        ``None`` for stores without files.
    """

    log = Logger()

    def __init__(self, make_store, paths=lambda key_id: None):
        self._make_store = make_store
        self._paths = paths
        self._stores = {}  # key_id -> store
        self._opening = {}  # key_id -> Deferred

    def open_keys(self):
        """IKeyedReplayCache API"""
        return frozenset(self._stores)

    def open_key(self, key_id):
        """IKeyedReplayCache API"""
        if key_id in self._stores:
            return succeed(None)
        d = Deferred()
        if key_id in self._opening:
            self._opening[key_id].append(d)
            return d
        self._opening[key_id] = [d]
        store = self._make_store(key_id)
        store.start().addBoth(self._opened, key_id, store)
        return d

    def _opened(self, result, key_id, store):
        waiters = self._opening.pop(key_id)
        if not isinstance(result, Failure):
            self._stores[key_id] = store
        for d in waiters:
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(None)

    def check_and_record(self, key_id, tag):
        """IKeyedReplayCache API"""
        store = self._stores.get(key_id)
        if store is None:
            return fail(KeyError("no replay scope for this key"))
        return store.check_and_record(tag)

    @inlineCallbacks
    def retire_key(self, key_id):
        """IKeyedReplayCache API"""
        store = self._stores.pop(key_id, None)
        if store is not None:
            yield store.close()
        self._delete_files(key_id)

    def _delete_files(self, key_id):
        path = self._paths(key_id)
        if path is None:
            return
        for suffix in _SUFFIXES:
            try:
                os.unlink(path + suffix)
            except FileNotFoundError:
                pass

    def close(self):
        """IKeyedReplayCache API"""
        stores, self._stores = list(self._stores.values()), {}
        return DeferredList([store.close() for store in stores], consumeErrors=True).addCallback(lambda _: None)


def sqlite_per_key(reactor, directory, filter_bytes=1 << 20):
    """
    A :class:`PerKeyReplayCache` with one SQLite file per key in
    ``directory`` (made 0700): ``replay-HEX.sqlite``.  Files of keys not
    opened by :func:`drop_other_keys` are leftovers of retired keys.
    """
    from nymprov.keys import ensure_private_dir
    from nymprov.storage.sqlite import SQLiteStore

    ensure_private_dir(directory)

    def path(key_id):
        return os.path.join(directory, f"replay-{key_id.hex()}.sqlite")

    def make(key_id):
        return SQLiteStore(reactor, path(key_id), StoreLimits(), replay_key_id=key_id, replay_filter_bytes=filter_bytes)

    cache = PerKeyReplayCache(make, path)
    cache.directory = directory
    return cache


def drop_other_keys(directory, key_ids):
    """
    Delete the replay files in ``directory`` of every key but ``key_ids``:
    what a node left behind when it stopped across a key's retirement.

    :returns: how many files were deleted.
    """
    keep = {f"replay-{key_id.hex()}.sqlite" for key_id in key_ids}
    deleted = 0
    for name in os.listdir(directory):
        if not name.startswith("replay-"):
            continue
        base = name
        for suffix in _SUFFIXES[1:]:
            if base.endswith(suffix):
                base = base[: -len(suffix)]
        if base.endswith(".sqlite") and base not in keep:
            os.unlink(os.path.join(directory, name))
            deleted += 1
    return deleted


def memory_per_key(clock):
    """A :class:`PerKeyReplayCache` held in memory."""
    from nymprov.storage.memory import MemoryStore

    return PerKeyReplayCache(lambda key_id: MemoryStore(clock))


@implementer(IReplayCache)
class ScopedReplay:
    """One key's view of an :class:`IKeyedReplayCache`, as an ``IReplayCache``."""

    def __init__(self, keyed, key_id):
        self._keyed = keyed
        self.key_id = key_id

    def check_and_record(self, tag):
        """IReplayCache API"""
        return self._keyed.check_and_record(self.key_id, tag)
