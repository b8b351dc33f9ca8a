"""
``nym-directory`` as a Twisted service: its signing key, the descriptor
store, the HTTP API and the chore that drops silent nodes.
"""

import os

from nacl.signing import SigningKey
from twisted.application.service import Service
from twisted.logger import Logger

from nymprov.directory.config import read_admission_list
from nymprov.directory.registry import Registry
from nymprov.directory.status import DirectoryStatus
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
from nymprov.node.operator import http_listener, serve_http
from nymprov.node.service import ListenerService, NodeService, chore

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


class _Registry(Service):
    """
    The descriptor store and registry in the directory's tree: opened at
    start (after twistd has dropped privileges), closed once the API and
    the expiry chore have stopped.
    """

    name = "registry"
    log = Logger()

    def __init__(self, directory):
        self._directory = directory

    def startService(self):
        Service.startService(self)
        directory, config = self._directory, self._directory.config
        directory._store = DescriptorStore(config.database_path)
        directory.registry = Registry(
            directory._store,
            directory.signing_key,
            Epochs(config.epoch_length, config.epoch_zero),
            expiry=config.expiry,
            grace=config.grace,
            max_skew=config.max_skew,
            admitted=directory.admitted,
            counters=directory.counters,
            rates=config.rates,
        )
        loaded = directory.registry.load(directory._reactor.seconds())
        self.log.info(
            "directory key {key}; {count} node(s) still listed; epochs of {length:g} s",
            key=key_text(directory.public_key),
            count=loaded,
            length=config.epoch_length,
        )
        directory.listener.serve(make_site(directory.registry, directory._reactor))
        serve_http(directory.http_listener, DirectoryStatus(directory))

    def stopService(self):
        Service.stopService(self)
        if self._directory._store is not None:
            self._directory._store.close()


class DirectoryService(NodeService):
    """
    The directory as a tree of services: registry (store), HTTP API,
    expiry chore; see :mod:`nymprov.node.service`.

    :param config: a :class:`nymprov.directory.config.DirectoryConfig`.
    :param reactor: the reactor (injected, for tests); also the clock.
    """

    log = Logger()
    name = "nym-directory"

    def __init__(self, config, reactor, *, stop_reactor_on_failure=False):
        NodeService.__init__(self, reactor, stop_reactor_on_failure)
        self.config = config
        self.counters = Counters()
        self.signing_key = self.registry = self._store = self.admitted = None
        self.listener = ListenerService(reactor, [config.listen], "directory API")
        self.http_listener = http_listener(reactor, [config.http_listen] if config.http_listen else [])
        self.listeners = [self.listener, self.http_listener]

    @property
    def ports(self):
        """The HTTP API's listening ports."""
        return self.listener.ports

    @property
    def public_key(self):
        """The 32-byte key that nodes and clients pin."""
        return bytes(self.signing_key.verify_key)

    def assemble(self):
        """Read the admission list, make or load the key; add the parts."""
        if self.signing_key is not None:
            return
        config = self.config
        self.admitted = None if config.admit is None else read_admission_list(config.admit)
        self.signing_key = load_or_create_directory_key(config.key_path)
        # Often enough that a node leaves within a tenth of the expiry of it
        # being due; documents already leave out silent nodes when built.
        expiry = chore(self._reactor, max(config.expiry / 10, 0.1), self._expire, "expiry")
        # The operator's API first, so that /health answers while the rest stops.
        for part in (self.http_listener, _Registry(self), self.listener, expiry):
            part.setServiceParent(self)

    def _expire(self):
        try:
            self.registry.expire(self._reactor.seconds())
        except Exception:
            # A LoopingCall stops for good on its first exception.
            self.log.failure("expiring silent nodes failed")

    def stats_line(self):
        """The stats line: every counter."""
        return f"stats: {self.counters.snapshot()}"
