"""
A node's Sphinx keys by epoch: the next epoch's key is made ahead (so it can
be published), the current one is used, the previous one is still accepted
for a grace period, then deleted from disk.

At any moment at most two keys are usable, and they differ in the parity of
their epoch (the previous key only in the first ``grace`` seconds of an
epoch, the next only in its last ``grace`` seconds, and ``grace`` is at most
half an epoch), so the key-rotation byte of a frame names one key.
"""

import hashlib
import os
import re

from twisted.logger import Logger

from nymprov.errors import ConfigError, PacketRefused
from nymprov.keys import (
    decode_key_file,
    encode_key_file,
    ensure_private_dir,
    read_private_file,
    write_file_atomically,
)
from nymprov.sphinx import KeyPair
from nymprov.wire.frames import ROTATION_UNKNOWN, rotation_of_epoch

EPOCH_KEY_HEADER = "nymprov x25519 sphinx epoch v1"
_KEY_FILE = re.compile(r"^sphinx-epoch-(\d{1,10})\.key$")


def replay_key_id(keypair):
    """The SHA-256 of a Sphinx public key: the scope of its replay tags."""
    return hashlib.sha256(keypair.public_bytes).digest()


class EpochKeyRing:
    """
    :param str directory: where the key files are kept (made 0700; each
        file ``sphinx-epoch-N.key`` is 0600).
    :param epochs: the network's :class:`nymprov.netdoc.Epochs`.
    :param float grace: seconds after an epoch ends that its key is still
        accepted, and before an epoch begins that its key already is; at
        most half an epoch.
    :raises ConfigError: if ``grace`` is too long or a key file is bad.
    """

    log = Logger()

    def __init__(self, directory, epochs, grace):
        if not 0 <= grace <= epochs.length / 2:
            raise ConfigError(f"grace {grace:g} s must be between 0 and half an epoch ({epochs.length / 2:g} s)")
        self.directory = directory
        self.epochs = epochs
        self.grace = grace
        self._keys = {}  # epoch -> KeyPair
        ensure_private_dir(directory)
        for name in sorted(os.listdir(directory)):
            match = _KEY_FILE.match(name)
            if match:
                path = os.path.join(directory, name)
                raw = decode_key_file(path, EPOCH_KEY_HEADER, read_private_file(path))
                self._keys[int(match.group(1))] = KeyPair.from_private_bytes(raw)

    def _path(self, epoch):
        return os.path.join(self.directory, f"sphinx-epoch-{epoch}.key")

    @property
    def epochs_held(self):
        """The epochs whose keys are on disk, in order."""
        return sorted(self._keys)

    def key_of(self, epoch):
        """:returns: the ``KeyPair`` of ``epoch``, or ``None``."""
        return self._keys.get(epoch)

    def refresh(self, now):
        """
        Make the current and next epochs' keys if missing, and delete every
        key no longer usable (its file goes at once).

        :returns: ``(made, retired)``: lists of ``(epoch, KeyPair)``.
        """
        current = self.epochs.number_at(now)
        made = []
        for epoch in (current, current + 1):
            if epoch not in self._keys:
                keypair = KeyPair.generate()
                write_file_atomically(self._path(epoch), encode_key_file(EPOCH_KEY_HEADER, keypair.private_bytes))
                self._keys[epoch] = keypair
                made.append((epoch, keypair))
        keep_previous = now < self.epochs.start_of(current) + self.grace
        retired = []
        for epoch in sorted(self._keys):
            if epoch < current - 1 or (epoch == current - 1 and not keep_previous) or epoch > current + 1:
                keypair = self._keys.pop(epoch)
                try:
                    os.unlink(self._path(epoch))
                except FileNotFoundError:
                    pass
                retired.append((epoch, keypair))
                self.log.info("retired the Sphinx key of epoch {epoch}", epoch=epoch)
        return made, retired

    def usable(self, now):
        """
        :returns: ``{epoch: KeyPair}`` of the keys packets may be built for
            now: the current one, the previous within ``grace`` of the
            boundary, the next within ``grace`` of it.
        """
        current = self.epochs.number_at(now)
        usable = {}
        if now < self.epochs.start_of(current) + self.grace:
            usable[current - 1] = self._keys.get(current - 1)
        usable[current] = self._keys.get(current)
        if now >= self.epochs.end_of(current) - self.grace:
            usable[current + 1] = self._keys.get(current + 1)
        return {epoch: key for epoch, key in usable.items() if key is not None}

    def candidates(self, rotation, now):
        """
        The keys to try for a packet whose frame named ``rotation``, best
        first: the one key of that parity, or, when the frame did not say,
        the current key and then the other usable one.

        :returns: a list of ``(epoch, KeyPair)``.
        :raises PacketRefused: ``retired_key`` if no usable key has that
            parity (a packet for a key past its grace, or not yet live).
        """
        usable = self.usable(now)
        current = self.epochs.number_at(now)
        if rotation == ROTATION_UNKNOWN:
            return sorted(usable.items(), key=lambda item: item[0] != current)
        chosen = [(epoch, key) for epoch, key in usable.items() if rotation_of_epoch(epoch) == rotation]
        if not chosen:
            raise PacketRefused("retired_key", f"no live key for key rotation {rotation}")
        return chosen

    def announced(self, now):
        """:returns: ``[(epoch, public key)]`` to publish: the current and next keys."""
        current = self.epochs.number_at(now)
        return [(e, self._keys[e].public_bytes) for e in (current, current + 1) if e in self._keys]


class StaticKeys:
    """
    The key choice of a node without epochs: one key, one replay cache,
    whatever the frame says.
    """

    static = True

    def __init__(self, keypair, replay_cache):
        self._choice = [(keypair, replay_cache, ROTATION_UNKNOWN)]

    def choose(self, rotation):
        return self._choice


class RotatingKeys:
    """
    The key choice of a node with epochs: the keys of an
    :class:`EpochKeyRing` usable now, each with its own replay scope.

    :param ring: the :class:`EpochKeyRing`.
    :param keyed_cache: an ``IKeyedReplayCache`` with every usable key open.
    :param clock: an ``IReactorTime``.
    """

    static = False

    def __init__(self, ring, keyed_cache, clock):
        from nymprov.storage.keyed import ScopedReplay

        self._ring = ring
        self._cache = keyed_cache
        self._clock = clock
        self._scoped = ScopedReplay
        self._scopes = {}  # key_id -> ScopedReplay

    def choose(self, rotation):
        """
        :returns: ``[(KeyPair, IReplayCache, rotation to send on)]`` to try
            in order.
        :raises PacketRefused: ``retired_key`` if no usable key matches.
        """
        choices = []
        for epoch, keypair in self._ring.candidates(rotation, self._clock.seconds()):
            key_id = replay_key_id(keypair)
            scope = self._scopes.get(key_id)
            if scope is None:
                scope = self._scopes[key_id] = self._scoped(self._cache, key_id)
            choices.append((keypair, scope, rotation_of_epoch(epoch)))
        return choices

    def forget(self, keypair):
        """Drop the replay scope object of a retired key."""
        self._scopes.pop(replay_key_id(keypair), None)
