"""
What a node with epochs runs beside its core: the key rotation chore (keys
made ahead, retired after the grace period with their replay tags), the
publication of its descriptor to the directory, and the network documents
it routes by.
"""

import os

from twisted.internet.defer import DeferredList, inlineCallbacks
from twisted.logger import Logger
from zope.interface import implementer

from nymprov._version import __version__
from nymprov.interfaces import ITopology
from nymprov.netdoc.epochs import Epochs
from nymprov.node.epochkeys import EpochKeyRing, RotatingKeys, replay_key_id
from nymprov.storage.keyed import drop_other_keys, sqlite_per_key

KEYS_DIR = "sphinx-keys"
REPLAY_DIR = "replay"


class KeyRotation:
    """
    A node's Sphinx keys by epoch and their replay scopes.

    :param str data_dir: the node's data directory (keys go in
        ``sphinx-keys/``, replay files in ``replay/``).
    :param epochs: the network's :class:`nymprov.netdoc.Epochs`.
    :param float grace: seconds a retired key is still accepted.
    :param clock: an ``IReactorTime``.
    :param counters: a :class:`nymprov.metrics.Counters`.
    """

    log = Logger()

    def __init__(self, data_dir, epochs, grace, clock, counters):
        self.ring = EpochKeyRing(os.path.join(data_dir, KEYS_DIR), epochs, grace)
        self.replay_dir = os.path.join(data_dir, REPLAY_DIR)
        self.cache = sqlite_per_key(clock, self.replay_dir)
        self.keys = RotatingKeys(self.ring, self.cache, clock)
        self._clock = clock
        self._counters = counters

    @property
    def epochs(self):
        return self.ring.epochs

    @property
    def check_interval(self):
        """How often :meth:`tick` runs: a small part of the grace period."""
        return max(0.05, min(self.ring.grace / 4, self.ring.epochs.length / 20))

    @inlineCallbacks
    def start(self):
        """Make the keys due, drop what retired while stopped, open the live keys' replay scopes."""
        self.ring.refresh(self._clock.seconds())
        held = [replay_key_id(self.ring.key_of(e)) for e in self.ring.epochs_held]
        dropped = drop_other_keys(self.replay_dir, held)
        if dropped:
            self.log.info("deleted {count} replay file(s) of keys retired while stopped", count=dropped)
        yield DeferredList([self.cache.open_key(key_id) for key_id in held], fireOnOneErrback=True)

    def tick(self):
        """
        The chore: make the next key when due, retire the old one after its
        grace period (deleting its tags).  Never fails (it runs in a
        LoopingCall).
        """
        try:
            made, retired = self.ring.refresh(self._clock.seconds())
        except Exception:
            self.log.failure("refreshing the epoch keys failed")
            return None
        waits = []
        for epoch, keypair in made:
            self._counters.incr("keys.made")
            waits.append(self.cache.open_key(replay_key_id(keypair)))
        for epoch, keypair in retired:
            self._counters.incr("keys.retired")
            self.keys.forget(keypair)
            waits.append(self.cache.retire_key(replay_key_id(keypair)))
        d = DeferredList(waits, consumeErrors=True)
        d.addCallback(self._check, "opening or retiring a replay scope")
        return d

    def _check(self, results, doing):
        for ok, failure in results:
            if not ok:
                self.log.failure(doing + " failed", failure)

    def announced(self):
        """``[(epoch, public key)]`` for the descriptor."""
        return self.ring.announced(self._clock.seconds())

    def stop(self):
        return self.cache.close()


def make_epochs(length, zero):
    """:returns: :class:`Epochs`, or ``None`` when ``length`` is 0 (no epochs)."""
    return Epochs(length, zero) if length else None


@implementer(ITopology)
class DocumentTopology:
    """
    The nodes that the held network documents (this epoch's and the next)
    list, as an ``ITopology``; until a document arrives, ``fallback``'s.

    :param holder: a :class:`nymprov.netdoc.fetch.DocumentHolder`.
    :param fallback: an ``ITopology`` (for example a static file's).
    """

    def __init__(self, holder, fallback):
        self._holder = holder
        self._fallback = fallback
        self._first = frozenset()
        self._known = frozenset()
        holder.on_document(self._update)

    def _update(self, _document):
        first, known = set(), set()
        for epoch in (self._holder.latest.epoch - 1, self._holder.latest.epoch):
            document = self._holder.document_for(epoch)
            if document is None:
                continue
            for node in document.nodes:
                address = _address(node)
                known.add(address)
                if node.role == "mix" and node.layer == 1:
                    first.add(address)
        self._first, self._known = frozenset(first), frozenset(known)

    def is_first_layer(self, address):
        """ITopology API"""
        return address in self._first or self._fallback.is_first_layer(address)

    def is_known_node(self, address):
        """ITopology API"""
        return address in self._known or self._fallback.is_known_node(address)


def _address(descriptor):
    from nymprov.sphinx import encode_address

    return encode_address(descriptor.mix_host, descriptor.mix_port)


def software_version():
    return f"nymprov {__version__}"


# -- the settings every node with a directory or epochs takes ----------------


def _optional(check):
    return lambda field, value: None if value is None else check(field, value)


def _check_url(field, value):
    from nymprov.options import InvalidSetting, describe

    if not isinstance(value, str) or not value.startswith(("http://", "https://")) or not value.isascii():
        raise InvalidSetting(field, f"expected an http:// or https:// URL, got {describe(value)}")
    return value.rstrip("/")


def _check_key(field, value):
    from nymprov.netdoc.errors import MalformedDocument
    from nymprov.netdoc.signed import key_from_text
    from nymprov.options import InvalidSetting

    try:
        key_from_text(value, "key")
    except MalformedDocument:
        raise InvalidSetting(field, "expected a base58 Ed25519 key (what nym-directory init prints)") from None
    return value


def network_checks():
    """The checks of the fields in :data:`NETWORK_HELP`, by field."""
    from nymprov.options import number

    return {
        "epoch_length": number(0.0),
        "epoch_zero": number(0.0),
        "epoch_grace": _optional(number(0.0)),
        "directory": _optional(_check_url),
        "directory_key": _optional(_check_key),
        "publish_interval": number(0.0, exclusive=True),
    }


NETWORK_HELP = {
    "epoch_length": "seconds per epoch, as the directory's; 0: one Sphinx key forever",
    "epoch_zero": "Unix time at which epoch 0 began, as the directory's",
    "epoch_grace": "seconds a retired Sphinx key is still accepted (at most half an epoch) [default: a quarter epoch]",
    "directory": "URL of the nym-directory to publish to and fetch the network from",
    "directory_key": "the directory's key to pin (base58, from nym-directory init)",
    "publish_interval": "seconds between publications of this node's descriptor",
}


def check_network_settings(config):
    """
    Cross-field checks of the network settings of a node's ``config``
    (frozen dataclass): fills in the default grace.

    :raises InvalidSetting: naming the option.
    """
    from nymprov.options import InvalidSetting

    if config.epoch_grace is None:
        object.__setattr__(config, "epoch_grace", config.epoch_length / 4)
    if config.epoch_length and config.epoch_grace > config.epoch_length / 2:
        raise InvalidSetting("epoch_grace", f"must be at most half an epoch ({config.epoch_length / 2:g} s)")
    if config.directory is not None:
        if config.directory_key is None:
            raise InvalidSetting("directory_key", "a node with --directory pins the directory's key")
        if not config.epoch_length:
            raise InvalidSetting("epoch_length", "a node with --directory needs the network's epochs")


# -- the directory, seen from a node ------------------------------------------


class DirectoryLink:
    """
    A node's link to its directory: it publishes the node's descriptor and
    fetches the network documents (the current epoch's and the next's)
    every ``interval``.

    :param reactor: the reactor.
    :param str url: the directory's base URL.
    :param bytes directory_key: the pinned 32-byte key.
    :param identity_key: the node's ``nacl.signing.SigningKey``.
    :param describe: ``describe(timestamp)`` returns the node's descriptor.
    :param epochs: the network's :class:`Epochs`.
    :param float interval: seconds between publications and fetches.
    :param counters: a :class:`nymprov.metrics.Counters`.
    """

    def __init__(self, reactor, url, directory_key, identity_key, describe, epochs, interval, counters):
        from nymprov.netdoc.fetch import DocumentFetcher, DocumentHolder, DocumentRefresher
        from nymprov.netdoc.http import make_agent
        from nymprov.netdoc.publish import DescriptorPublisher

        agent = make_agent(reactor)
        self._pool = agent.connection_pool
        self.holder = DocumentHolder(directory_key, counters)
        self.refresher = DocumentRefresher(DocumentFetcher(agent, url, self.holder), epochs, reactor, interval)
        self.publisher = DescriptorPublisher(agent, url, describe, identity_key, reactor, interval, counters)

    def start(self):
        """Publish now and every interval; fetch the documents likewise."""
        self.publisher.start()
        return self.refresher.start()

    @inlineCallbacks
    def stop(self):
        yield self.publisher.stop()
        yield self.refresher.stop()
        yield self._pool.closeCachedConnections()


def describe_node(role, identity, mix_address, rotation, *, layer=None, client=None):
    """
    :param tuple mix_address: ``(ip, port)`` of the mix link.
    :param rotation: the node's :class:`KeyRotation`.
    :param client: for a provider, ``(host, port, tls, fingerprint)``.
    :returns: ``describe(timestamp)`` for a :class:`DirectoryLink`.
    """
    from nymprov.netdoc.descriptor import Descriptor, EpochKey

    def describe(timestamp):
        extra = {}
        if client is not None:
            host, port, tls, fingerprint = client
            extra = dict(client_host=host, client_port=port, client_tls=tls, certificate_fingerprint=fingerprint)
        return Descriptor(
            identity=identity,
            role=role,
            layer=layer,
            mix_host=mix_address[0],
            mix_port=mix_address[1],
            timestamp=timestamp,
            sphinx_keys=tuple(EpochKey(e, k) for e, k in rotation.announced()),
            software_version=software_version(),
            **extra,
        )

    return describe


def published_address(ports, announce=()):
    """
    The ``(ip, port)`` a node tells the directory: the first ``announce``
    entry, else the first bound port's address.

    :raises ConfigError: if that is a wildcard address.
    """
    from nymprov.errors import ConfigError

    if announce:
        return tuple(announce[0])
    address = ports[0].getHost()
    if address.host in ("0.0.0.0", "::", ""):
        raise ConfigError("--announce: a node listening on a wildcard address must say where it is reached")
    return address.host, address.port
