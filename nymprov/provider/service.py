"""
The provider as a Twisted service: its parts built from a configuration and
started and stopped in the right order.
"""


from twisted.application.service import IService
from twisted.internet.defer import inlineCallbacks, maybeDeferred
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface.exceptions import Invalid
from zope.interface.verify import verifyObject

from nymprov.errors import ConfigError
from nymprov.interfaces import IInbox, IProvider
from nymprov.keys import load_or_create_keys
from nymprov.metrics import Counters
from nymprov.node.core import NodeCore
from nymprov.node.service import NodeService
from nymprov.provider.clientapi import ClientApiFactory
from nymprov.provider.config import POSTGRES_SCHEMES
from nymprov.node.mixlink import MixLinkFactory
from nymprov.node.mixsender import MixSenderPool
from nymprov.sphinx import encode_address
from nymprov.storage.limits import StoreLimits
from nymprov.netdoc.signed import key_from_text
from nymprov.node.network import (
    DirectoryLink,
    DocumentTopology,
    KeyRotation,
    describe_node,
    make_epochs,
    published_address,
)
from nymprov.node.loops import node_loops
from nymprov.topology import load_topology, provider_topology
from nymprov.node.pool import UnwrapPool

#: How often expired messages and leases are swept.
EXPIRY_INTERVAL = 60.0  # seconds


def make_store(config, reactor, keys):
    """
    :returns: the ``IInboxStore`` (also ``IReplayCache``) the config asks for.
    """
    limits = StoreLimits(
        max_messages=config.inbox_max_messages,
        max_bytes=config.inbox_max_bytes,
        message_ttl=config.message_ttl,
        slot_size=config.slot_size,
    )
    if config.store == "memory":
        from nymprov.storage.memory import MemoryStore

        return MemoryStore(reactor, limits)
    if config.store.lower().startswith(POSTGRES_SCHEMES):
        from nymprov.storage.postgresql import PostgresStore

        return PostgresStore(reactor, config.store, limits, replay_key_id=keys.replay_key_id)
    from nymprov.storage.sqlite import SQLiteStore

    return SQLiteStore(
        reactor, config.db_path, limits, replay_key_id=keys.replay_key_id, synchronous=config.db_synchronous
    )


def make_backend(config, sender, topology, reactor, **context):
    """
    :returns: the ``IProvider`` made by the ``--backend`` plugin with the
        ``--backend-option`` values; ``context`` is passed on to ``make``.
    """
    from nymprov.plugins import find_maker, parse_backend_options

    maker = find_maker(config.backend)
    options = parse_backend_options(maker, config.backend_option)
    backend = maker.make(config, options, sender, topology, reactor, **context)
    # A backend written for another contract (one that opened envelopes
    # and sent SURB-ACKs itself) is refused here, not at its first packet.
    try:
        verifyObject(IInbox if IInbox.providedBy(backend) else IProvider, backend)
    except Invalid as e:
        raise ConfigError(f"--backend {config.backend}: not an IProvider: {e}")
    return backend


class ProviderService(NodeService):
    """
    A whole provider node: store, node core, mix link in and out, client API
    and the periodic chores.

    Starting opens the store before any port listens; stopping closes the
    ports first, sends delayed packets on, lets the neighbour queues drain
    and commits the store last, so that nothing accepted is lost.

    :param config: a :class:`nymprov.provider.config.ProviderConfig`.
    :param reactor: the reactor (injected, for tests).
    """

    log = Logger()
    name = "nym-provider"

    def __init__(self, config, reactor, *, stop_reactor_on_failure=False):
        NodeService.__init__(self, reactor, stop_reactor_on_failure)
        self.config = config
        self.counters = Counters()
        self.keys = load_or_create_keys(config.data_dir)
        self.store = make_store(config, reactor, self.keys)
        self.sender = MixSenderPool(reactor, self.counters, queue_limit=config.mix_queue)
        self.topology = provider_topology(
            (encode_address(host, port) for host, port in config.first_layer),
            getattr(config, "topology", None),
        )
        epochs = make_epochs(config.epoch_length, config.epoch_zero)
        # With epochs, Sphinx keys rotate, each with its own replay file.
        self.rotation = None
        if epochs is not None:
            self.rotation = KeyRotation(config.data_dir, epochs, config.epoch_grace, reactor, self.counters)
        self.directory = None
        if config.directory is not None:
            self.directory = DirectoryLink(
                reactor, config.directory, key_from_text(config.directory_key, "--directory-key"),
                self.keys.identity, self._describe, epochs, config.publish_interval, self.counters,
            )
            self.topology = DocumentTopology(self.directory.holder, self.topology)
        # Made by the --backend plugin (the inbox by default); the node
        # core sends each message's SURB-ACK once the backend took it.
        self.backend = make_backend(config, self.sender, self.topology, reactor, store=self.store,
                                    counters=self.counters)
        # Worker processes for the CPU work of unwrapping; None keeps it
        # all on the reactor thread.
        # (Workers hold one key: with epochs the reactor thread unwraps.)
        use_workers = config.unwrap_workers and self.rotation is None
        self.unwrapper = UnwrapPool(reactor, self.keys.sphinx, config.unwrap_workers) if use_workers else None
        self.node = NodeCore(
            self.keys.sphinx,
            self.store,
            self.backend,
            self.sender,
            self.topology,
            reactor,
            self.counters,
            max_delay=config.max_delay,
            unwrapper=self.unwrapper,
            keys=None if self.rotation is None else self.rotation.keys,
        )
        self.loops = None
        if config.node_loop_rate > 0 and config.topology is not None:
            self.loops = node_loops(self.node, self.keys.identity_public_bytes, self.keys.sphinx.public_bytes,
                                    load_topology(config.topology), self.sender, reactor, self.counters,
                                    config, self.name)
        self.certificate = None
        if config.client_tls:
            from nymprov.net.tls import load_or_create_certificate

            self.certificate = load_or_create_certificate(config.data_dir)
        self.mix_ports = []
        self.client_ports = []

    # -- factories -----------------------------------------------------------

    def _mix_factory(self):
        return MixLinkFactory(
            self.node,
            self.counters,
            self._reactor,
            max_connections=self.config.max_connections,
            max_connections_per_ip=self.config.max_connections_per_ip,
            idle_timeout=self.config.idle_timeout,
            frame_timeout=self.config.frame_timeout,
        )

    def _client_factory(self):
        config = self.config
        factory = ClientApiFactory(
            self.store,
            self.node,
            self.keys.identity,
            self._reactor,
            self.counters,
            registration=config.registration,
            invite_codes=tuple(config.invite_code),
            register_rate=(config.register_rate, 3600.0),
            send_rate=(config.send_rate, 2 * config.send_rate),
            pull_max=config.pull_max,
            slot_size=config.slot_size,
            lease_seconds=config.lease_seconds,
            max_connections=config.max_connections,
            max_connections_per_ip=config.max_connections_per_ip,
            idle_timeout=config.idle_timeout,
            frame_timeout=config.frame_timeout,
        )
        if self.certificate is not None:
            from nymprov.net.tls import server_tls_options

            factory = TLSMemoryBIOFactory(server_tls_options(self.certificate), False, factory)
            factory.noisy = False
        return factory

    # -- life cycle ----------------------------------------------------------

    def _describe(self, timestamp):
        from nymprov.net.tls import certificate_fingerprint

        client = None
        if self.client_ports:
            # A backend without an inbox serves no client API: none is published.
            fingerprint = None if self.certificate is None else certificate_fingerprint(self.certificate)
            client = (*published_address(self.client_ports), self.certificate is not None, fingerprint)
        describe = describe_node(
            "provider", self.keys.identity_public_bytes, published_address(self.mix_ports, self.config.announce),
            self.rotation, client=client,
        )
        return describe(timestamp)

    @inlineCallbacks
    def _start(self):
        if self.rotation is not None:
            yield self.rotation.start()
            self.add_chore(self.rotation.check_interval, self.rotation.tick)
        yield maybeDeferred(self.store.start)
        if IService.providedBy(self.backend):
            yield maybeDeferred(self.backend.startService)
        self.mix_ports = yield self.listen(self.config.mix_listen, self._mix_factory(), "mix link", self.node)
        for host, port in self.config.announce:
            # The address clients put in their routes, where the bound one
            # is a wildcard or not the one the world sees.
            self.node.add_own_address(encode_address(host, port))
        if IInbox.providedBy(self.backend):
            security = "TLS" if self.certificate is not None else "plain TCP"
            self.client_ports = yield self.listen(
                self.config.client_listen, self._client_factory(), f"client API, {security}"
            )
        else:
            # No inbox, nothing to pull: clients have no business here.
            self.log.info("no client API: backend {backend} keeps no inbox", backend=self.backend.name)
        if self.unwrapper is not None:
            # Started once every port listens, so that a failed start leaves
            # no process behind; until then the reactor thread unwraps.
            self.unwrapper.start()
        if self.directory is not None:
            # Not waited for: an unreachable directory must not stop the node.
            self.directory.start()
        self.add_chore(EXPIRY_INTERVAL, self._expire)
        if self.loops is not None:
            self.loops.start()
        if self.config.stats_interval > 0:
            self.add_chore(self.config.stats_interval, self._log_stats)

    @inlineCallbacks
    def stopService(self):
        yield self._stop_listening()
        if self.loops is not None:
            self.loops.stop()
        self.mix_ports, self.client_ports = [], []
        if self.directory is not None:
            yield self.directory.stop()
        if self.unwrapper is not None:
            # Batches still in the workers reach the store before it closes.
            yield self.unwrapper.stop()
        sent_early = self.node.stop()
        if sent_early:
            self.log.info("sent {count} delayed packets on at shutdown", count=sent_early)
        if IService.providedBy(self.backend) and self.backend.running:
            # Before the sender: a backend may still send replies.
            yield maybeDeferred(self.backend.stopService)
        yield self.sender.stopService()
        yield self.store.close()
        if self.rotation is not None:
            yield self.rotation.stop()
        self.log.info("nym-provider stopped; counters: {counters}", counters=self.counters.snapshot())

    # -- chores --------------------------------------------------------------

    def _expire(self):
        # A LoopingCall stops for good on its first exception, so a failed
        # sweep is logged and the next one still runs.
        d = maybeDeferred(self.store.expire, self._reactor.seconds())
        d.addCallback(lambda n: n and self.counters.incr("messages.expired", amount=n))
        d.addErrback(lambda f: self.log.failure("expiry sweep failed", f))
        return d

    def _log_stats(self):
        d = maybeDeferred(self.store.sizes)
        d.addCallback(
            lambda sizes: self.log.info(
                "stats: {counters} store={sizes}", counters=self.counters.snapshot(), sizes=sizes
            )
        )
        d.addErrback(lambda f: self.log.failure("stats failed", f))
        return d


def make_provider_service(config, reactor=None):
    """
    Build the provider for ``config``; creates the data directory, keys and
    certificate if they are missing.

    :param config: a :class:`nymprov.provider.config.ProviderConfig`.
    :returns: a :class:`ProviderService` (an ``IService``).
    """
    if reactor is None:
        from twisted.internet import reactor
    return ProviderService(config, reactor, stop_reactor_on_failure=True)
