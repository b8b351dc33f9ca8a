"""
``nym-directory`` as a Twisted service: its signing key, the descriptor
store, the HTTP API and the chore that drops silent nodes.
"""

import os

from nacl.signing import SigningKey
from twisted.internet.defer import inlineCallbacks
from twisted.logger import Logger

from nymprov.directory.config import read_admission_list
from nymprov.directory.registry import Registry
from nymprov.directory.store import DescriptorStore
from nymprov.directory.web import make_site
from nymprov.keys import (
    decode_key_file,
    encode_key_file,
    ensure_private_dir,
    read_private_file,
    write_file_atomically,
)
from nymprov.metrics import Counters
from nymprov.netdoc.epochs import Epochs
from nymprov.netdoc.signed import key_text
from nymprov.node.service import NodeService

DIRECTORY_KEY_HEADER = "nymprov ed25519 directory v1"


def load_or_create_directory_key(path):
    """
    The directory's Ed25519 signing key from ``path`` (mode 0600), made
    first if the file is missing.

    :raises ConfigError: if the file is malformed or open to others.
    """
    ensure_private_dir(os.path.dirname(path))
    if not os.path.lexists(path):
        write_file_atomically(path, encode_key_file(DIRECTORY_KEY_HEADER, SigningKey.generate().encode()))
    return SigningKey(decode_key_file(path, DIRECTORY_KEY_HEADER, read_private_file(path)))


class DirectoryService(NodeService):
    """
    :param config: a :class:`nymprov.directory.config.DirectoryConfig`.
    :param reactor: the reactor (injected, for tests); also the clock.
    """

    log = Logger()
    name = "nym-directory"

    def __init__(self, config, reactor, *, stop_reactor_on_failure=False):
        NodeService.__init__(self, reactor, stop_reactor_on_failure)
        self.config = config
        self.counters = Counters()
        self.signing_key = load_or_create_directory_key(config.key_path)
        admitted = None if config.admit is None else read_admission_list(config.admit)
        self._store = DescriptorStore(config.database_path)
        self.registry = Registry(
            self._store,
            self.signing_key,
            Epochs(config.epoch_length, config.epoch_zero),
            expiry=config.expiry,
            grace=config.grace,
            max_skew=config.max_skew,
            admitted=admitted,
            counters=self.counters,
        )
        self.ports = []

    @property
    def public_key(self):
        """The 32-byte key that nodes and clients pin."""
        return self.registry.public_key

    @inlineCallbacks
    def _start(self):
        loaded = self.registry.load(self._reactor.seconds())
        self.log.info(
            "directory key {key}; {count} node(s) still listed; epochs of {length:g} s",
            key=key_text(self.public_key),
            count=loaded,
            length=self.config.epoch_length,
        )
        site = make_site(self.registry, self._reactor)
        self.ports = yield self.listen([self.config.listen], site, "directory API")
        # Often enough that a node leaves within a tenth of the expiry of it
        # being due; documents already leave out silent nodes when built.
        self.add_chore(max(self.config.expiry / 10, 0.1), self._expire)

    def _expire(self):
        try:
            self.registry.expire(self._reactor.seconds())
        except Exception:
            # A LoopingCall stops for good on its first exception.
            self.log.failure("expiring silent nodes failed")

    @inlineCallbacks
    def stopService(self):
        yield self._stop_listening()
        self.ports = []
        self._store.close()
