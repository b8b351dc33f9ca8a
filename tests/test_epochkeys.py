"""Sphinx keys by epoch, and replay tags scoped per key."""

import os
import stat

from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from nymprov.errors import ConfigError, PacketRefused
from nymprov.interfaces import IKeyedReplayCache, IReplayCache
from nymprov.netdoc import Epochs
from nymprov.node.epochkeys import EpochKeyRing, replay_key_id
from nymprov.storage.keyed import ScopedReplay, drop_other_keys, memory_per_key, sqlite_per_key
from nymprov.wire.frames import ROTATION_UNKNOWN, rotation_of_epoch


def _key_files(directory):
    return sorted(name for name in os.listdir(directory) if name.endswith(".key"))


class EpochKeyRingTests(SynchronousTestCase):
    def setUp(self):
        self.directory = os.path.abspath(self.mktemp())
        self.ring = EpochKeyRing(self.directory, Epochs(10.0), grace=2.0)

    def test_life_of_a_key(self):
        """Made ahead, used, accepted for the grace period, then gone from disk."""
        made, retired = self.ring.refresh(5.0)
        self.assertEqual(([e for e, _ in made], retired), ([0, 1], []))
        self.assertEqual(_key_files(self.directory), ["sphinx-epoch-0.key", "sphinx-epoch-1.key"])
        for name in _key_files(self.directory):
            self.assertEqual(stat.S_IMODE(os.stat(os.path.join(self.directory, name)).st_mode), 0o600)
        self.assertEqual(sorted(self.ring.usable(5.0)), [0])
        self.assertEqual(sorted(self.ring.usable(8.5)), [0, 1])  # the next key, early
        self.assertEqual([e for e, _ in self.ring.announced(5.0)], [0, 1])
        old = self.ring.key_of(0)

        made, retired = self.ring.refresh(10.5)  # epoch 1, within grace
        self.assertEqual(([e for e, _ in made], retired), ([2], []))
        self.assertEqual(sorted(self.ring.usable(10.5)), [0, 1])
        [(epoch, key)] = self.ring.candidates(rotation_of_epoch(0), 10.5)
        self.assertEqual((epoch, key), (0, old))

        made, retired = self.ring.refresh(12.5)  # past the grace
        self.assertEqual((made, retired), ([], [(0, old)]))
        self.assertNotIn("sphinx-epoch-0.key", _key_files(self.directory))
        self.assertEqual(sorted(self.ring.usable(12.5)), [1])
        with self.assertRaises(PacketRefused) as caught:
            self.ring.candidates(rotation_of_epoch(0), 12.5)
        self.assertEqual(caught.exception.reason, "retired_key")

    def test_unknown_rotation_tries_current_first(self):
        """A frame without a rotation gets the current key first, then the other usable one."""
        self.ring.refresh(5.0)
        self.ring.refresh(10.5)
        self.assertEqual([e for e, _ in self.ring.candidates(ROTATION_UNKNOWN, 10.5)], [1, 0])
        self.assertEqual([e for e, _ in self.ring.candidates(ROTATION_UNKNOWN, 15.0)], [1])

    def test_restart_keeps_keys_and_drops_late_ones(self):
        """A restarted node has the same keys; one stopped past a boundary drops the retired ones."""
        self.ring.refresh(5.0)
        again = EpochKeyRing(self.directory, Epochs(10.0), grace=2.0)
        self.assertEqual(again.key_of(1).public_bytes, self.ring.key_of(1).public_bytes)
        made, retired = again.refresh(105.0)  # ten epochs later
        self.assertEqual(sorted(e for e, _ in retired), [0, 1])
        self.assertEqual(_key_files(self.directory), ["sphinx-epoch-10.key", "sphinx-epoch-11.key"])

    def test_grace_at_most_half_an_epoch(self):
        """A grace longer than half an epoch would make two keys share a rotation byte."""
        with self.assertRaises(ConfigError):
            EpochKeyRing(self.directory, Epochs(10.0), grace=6.0)


class KeyedReplayCacheTests(TestCase):
    timeout = 60

    async def test_scoped_per_key_and_retired_with_files(self):
        """Tags are per key; retiring a key deletes its file; after ten epochs only live keys' tags are on disk."""
        directory = os.path.abspath(self.mktemp())
        cache = sqlite_per_key(reactor, directory, filter_bytes=4096)
        self.addCleanup(cache.close)
        verifyObject(IKeyedReplayCache, cache)
        key_a, key_b = b"a" * 32, b"b" * 32
        await cache.open_key(key_a)
        await cache.open_key(key_b)
        tag = b"t" * 16
        self.assertTrue(await cache.check_and_record(key_a, tag))
        self.assertFalse(await cache.check_and_record(key_a, tag))
        scoped = ScopedReplay(cache, key_b)
        verifyObject(IReplayCache, scoped)
        self.assertTrue(await scoped.check_and_record(tag))  # another key's scope
        with self.assertRaises(KeyError):
            await cache.check_and_record(b"c" * 32, tag)

        # Ten epochs of traffic, one new key each, the oldest retired.
        live = [key_a, key_b]
        for epoch in range(10):
            new = bytes([epoch]) * 32
            await cache.open_key(new)
            for i in range(50):
                self.assertTrue(await cache.check_and_record(new, i.to_bytes(16, "big")))
            await cache.retire_key(live.pop(0))
            live.append(new)
        self.assertEqual(cache.open_keys(), frozenset(live))
        files = sorted(n for n in os.listdir(directory) if n.endswith(".sqlite"))
        self.assertEqual(files, sorted(f"replay-{k.hex()}.sqlite" for k in live))
        await cache.close()

        # A restart reads only the live keys' tags, which still stop replays.
        again = sqlite_per_key(reactor, directory, filter_bytes=4096)
        self.addCleanup(again.close)
        self.assertEqual(drop_other_keys(directory, [live[-1]]), 1)
        await again.open_key(live[-1])
        self.assertFalse(await again.check_and_record(live[-1], (7).to_bytes(16, "big")))
        self.assertTrue(await again.check_and_record(live[-1], (99).to_bytes(16, "big")))

    async def test_keys_sharing_a_prefix_have_their_own_files(self):
        """Two key ids alike in their first half still get separate replay files."""
        directory = os.path.abspath(self.mktemp())
        cache = sqlite_per_key(reactor, directory, filter_bytes=4096)
        self.addCleanup(cache.close)
        one, two = bytes(31) + b"\x01", bytes(31) + b"\x02"
        await cache.open_key(one)
        await cache.open_key(two)
        self.assertTrue(await cache.check_and_record(one, b"t" * 16))
        self.assertTrue(await cache.check_and_record(two, b"t" * 16))
        await cache.retire_key(one)
        self.assertFalse(await cache.check_and_record(two, b"t" * 16))
        self.assertEqual(len([n for n in os.listdir(directory) if n.endswith(".sqlite")]), 1)

    async def test_memory(self):
        cache = memory_per_key(Clock())
        await cache.open_key(b"k" * 32)
        self.assertTrue(await cache.check_and_record(b"k" * 32, b"t" * 16))
        self.assertFalse(await cache.check_and_record(b"k" * 32, b"t" * 16))
        await cache.retire_key(b"k" * 32)
        self.assertEqual(cache.open_keys(), frozenset())

    def test_replay_key_id(self):
        ring = EpochKeyRing(os.path.abspath(self.mktemp()), Epochs(10.0), grace=1.0)
        ring.refresh(0.0)
        self.assertEqual(len(replay_key_id(ring.key_of(0))), 32)
