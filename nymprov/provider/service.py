"""
The provider as a tree of Twisted services: store, unwrap pool, mix sender,
backend, node core, listeners and chores, started in that order and stopped
in reverse (see :mod:`nymprov.node.service`).
"""


from twisted.application.service import IService
from twisted.internet.defer import maybeDeferred
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface.exceptions import Invalid
from zope.interface.verify import verifyObject

from nymprov.errors import ConfigError
from nymprov.interfaces import IInbox, IProvider

from nymprov.metrics import Counters
from nymprov.node.core import NodeCore
from nymprov.node.datadir import DataDirectory
from nymprov.node.mixlink import MixLinkFactory
from nymprov.node.mixsender import MixSenderPool
from nymprov.node.pool import UnwrapPool
from nymprov.node.network import (
    DirectoryLink,
    DocumentTopology,
    KeyRotation,
    describe_node,
    make_epochs,
    published_address,
)
from nymprov.node.service import DEFAULT_STOP_TIMEOUT, ListenerService, NodeCoreService, NodeService, Part, chore
from nymprov.netdoc.signed import key_from_text
from nymprov.node.operator import admin_listener, http_listener, listening, serve_admin, serve_http, summary_part
from nymprov.provider.admin import ProviderAdmin, admin_routes
from nymprov.provider.clientapi import ClientApiFactory
from nymprov.provider.reloading import reload_provider
from nymprov.provider.status import ProviderStatus
from nymprov.provider.config import POSTGRES_SCHEMES
from nymprov.sphinx import encode_address
from nymprov.storage.limits import StoreLimits
from nymprov.node.loops import node_loops
from nymprov.topology import SwappableTopology, load_topology, provider_topology

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
    A whole provider node: store, unwrap workers, mix link out, backend,
    node core, mix link in, client API and the periodic chores.

    Nothing is made on disk until :meth:`privilegedStartService` (called by
    ``startService`` if nobody did): it binds the ports first, so a port in
    use creates nothing, then makes the data directory, keys and
    certificate (given to ``owner``) and the parts.  Starting opens the
    store before any connection is accepted; stopping closes the ports
    first, lets every packet read reach its fate, lets the neighbour queues
    drain and commits the store last, so that nothing accepted is lost.

    :param config: a :class:`nymprov.provider.config.ProviderConfig`.
    :param reactor: the reactor (injected, for tests).
    :param owner: ``(uid, gid)`` that created files are given to (what
        ``twistd --uid/--gid`` switches to), or ``None``.
    """

    log = Logger()
    name = "nym-provider"

    def __init__(self, config, reactor, *, stop_reactor_on_failure=False, owner=None,
                 stop_timeout=DEFAULT_STOP_TIMEOUT):
        NodeService.__init__(self, reactor, stop_reactor_on_failure, stop_timeout)
        self.config = config
        self.counters = Counters()
        # The topology of the configuration, which SIGHUP replaces; with a
        # directory, the directory's document is consulted first.
        self.static_topology = SwappableTopology(provider_topology(
            (encode_address(host, port) for host, port in config.first_layer),
            getattr(config, "topology", None),
        ))
        self.topology = self.static_topology
        self.data = DataDirectory(config.data_dir, owner)
        # Made by assemble().
        self.keys = self.store = self.sender = self.backend = self.unwrapper = self.node = None
        self.rotation = self.directory = self.loops = None
        self.certificate = None
        # Made by assemble(): the client API's factory, the operator's status and admin.
        self.client_api = self.status = self.admin = None
        security = "TLS" if config.client_tls else "plain TCP"
        self.mix_listener = ListenerService(reactor, config.mix_listen, "mix link")
        self.client_listener = ListenerService(reactor, config.client_listen, f"client API, {security}")
        self.http_listener = http_listener(reactor, config.http_listen)
        self.admin_listener = admin_listener(reactor, config.admin_socket)
        # The admin socket is bound in assemble(), once its directory exists.
        self.listeners = [self.mix_listener, self.client_listener, self.http_listener]

    @property
    def mix_ports(self):
        """The mix link's listening ports."""
        return self.mix_listener.ports

    @property
    def client_ports(self):
        """The client API's listening ports."""
        return self.client_listener.ports

    # -- parts -------------------------------------------------------------

    def assemble(self):
        """
        Make the data directory, keys and certificate if missing, and the
        parts of the node, added as children in start order.
        """
        if self.node is not None:
            return
        config, reactor = self.config, self._reactor
        self.keys = self.data.keys()
        if config.client_tls:
            self.certificate = self.data.certificate()
        if config.store == "sqlite":
            self.data.database(config.db_path)
        self.store = make_store(config, reactor, self.keys)
        epochs = make_epochs(config.epoch_length, config.epoch_zero)
        # With epochs, Sphinx keys rotate, each with its own replay file.
        if epochs is not None:
            self.rotation = KeyRotation(config.data_dir, epochs, config.epoch_grace, reactor, self.counters)
        if config.directory is not None:
            self.directory = DirectoryLink(
                reactor, config.directory, key_from_text(config.directory_key, "--directory-key"),
                self.keys.identity, self._describe, epochs, config.publish_interval, self.counters,
            )
            self.topology = DocumentTopology(self.directory.holder, self.topology)
        self.sender = MixSenderPool(reactor, self.counters, queue_limit=config.mix_queue)
        # Made by the --backend plugin (the inbox by default); the node
        # core sends each message's SURB-ACK once the backend took it.
        self.backend = make_backend(config, self.sender, self.topology, reactor, store=self.store,
                                    counters=self.counters)
        # Worker processes for the CPU work of unwrapping; None keeps it
        # all on the reactor thread.  (Workers hold one key: with epochs the
        # reactor thread unwraps.)
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
            deliver_timeout=config.deliver_timeout,
            ack_rate=(config.ack_rate, 2 * config.ack_rate),
            unwrapper=self.unwrapper,
            keys=None if self.rotation is None else self.rotation.keys,
        )
        # Loops take each epoch's keys from the directory's documents; a
        # topology file's keys are good only while keys do not rotate.
        if config.node_loop_rate > 0 and self.directory is not None and epochs is not None:
            self.loops = node_loops(self.node, self.keys.identity_public_bytes, None, None, self.sender,
                                    reactor, self.counters, config, self.name,
                                    holder=self.directory.holder, epochs=epochs)
        elif config.node_loop_rate > 0 and config.topology is not None and self.rotation is None:
            self.loops = node_loops(self.node, self.keys.identity_public_bytes, self.keys.sphinx.public_bytes,
                                    load_topology(config.topology), self.sender, reactor, self.counters,
                                    config, self.name)
        for host, port in config.announce:
            # The address clients put in their routes, where the bound one
            # is a wildcard or not the one the world sees.
            self.node.add_own_address(encode_address(host, port))
        self.mix_listener.serve(self._mix_factory(), self.node)
        self.status = ProviderStatus(self)
        serve_http(self.http_listener, self.status)
        # First: it answers /health while the rest starts and stops.
        parts = [self.http_listener]
        if self.rotation is not None:
            parts.append(Part("key rotation", self.rotation.start, self.rotation.stop))
        parts += [self.store, self.unwrapper, self.sender]
        if IService.providedBy(self.backend):
            parts.append(self.backend)
        parts += [NodeCoreService(self.node, reactor), self.mix_listener]
        if IInbox.providedBy(self.backend):
            self.client_listener.serve(self._client_factory())
            parts.append(self.client_listener)
            self.admin_listener.privilegedStartService()
            self.listeners.append(self.admin_listener)
            self.admin = ProviderAdmin(self, self.status, self.client_api.registration, self.client_api.sessions,
                                       reactor)
            serve_admin(self.admin_listener, admin_routes(self.admin), config.admin_socket, self.data.owner)
            # After the client API: admin requests reach the store, which
            # closes after it.
            parts.append(self.admin_listener)
        else:
            # No inbox, nothing to pull: clients have no business here.
            # (Its ports were bound with the others, so that a port in use
            # made nothing; they are let go unused.)
            self.client_listener.unbind()
            self.listeners = [self.mix_listener, self.http_listener]
            self.log.info("no client API: backend {backend} keeps no inbox", backend=self.backend.name)
        if self.directory is not None:
            # Its start is not waited for: an unreachable directory must not
            # stop the node.
            parts.append(Part("directory", lambda: self.directory.start() and None, self.directory.stop))
        if self.loops is not None:
            parts.append(Part("node loops", self.loops.start, self.loops.stop))
        if self.rotation is not None:
            parts.append(chore(reactor, self.rotation.check_interval, self.rotation.tick, "key rotation tick"))
        parts.append(chore(reactor, EXPIRY_INTERVAL, self._expire, "expiry"))
        if config.stats_interval > 0:
            parts.append(chore(reactor, config.stats_interval, self.log_stats, "stats", at_start=False))
        parts.append(summary_part(self, self._summary))
        for part in parts:
            if part is not None:
                part.setServiceParent(self)

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

    def _summary(self):
        config = self.config
        keys = ", ".join(f"{epoch}: {key}" if epoch != "none" else key
                         for epoch, key in self.status.sphinx_keys().items())
        store = config.store if config.store != "sqlite" else f"sqlite {config.db_path}"
        if config.store.startswith(POSTGRES_SCHEMES):
            store = "postgresql"  # the URL may hold a password
        topology = config.topology or f"{len(config.first_layer)} first-layer nodes given"
        if self.directory is not None:
            topology += f", directory {config.directory}"
        return (f"identity {self.keys.identity_base58}, sphinx key {keys}, backend {self.backend.name},"
                f" store {store}, registration {config.registration}; mix link {listening(self.mix_listener)},"
                f" client API {listening(self.client_listener)}, HTTP API {listening(self.http_listener)},"
                f" admin socket {config.admin_socket if self.admin_listener.ports else 'none'};"
                f" topology {topology}")

    def reload(self, config):
        """
        Apply what can change of ``config`` while the node runs (SIGHUP).

        :returns: ``(reloaded, not reloaded)``: lists of setting names.
        """
        return reload_provider(self, config)

    def forget_created(self):
        self.data.remove_created()

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
        self.client_api = factory
        if self.certificate is not None:
            from nymprov.net.tls import server_tls_options

            factory = TLSMemoryBIOFactory(server_tls_options(self.certificate), False, factory)
            factory.noisy = False
        return factory

    # -- chores --------------------------------------------------------------

    def _expire(self):
        # A LoopingCall stops for good on its first exception, so a failed
        # sweep is logged and the next one still runs.
        d = maybeDeferred(self.store.expire, self._reactor.seconds())
        d.addCallback(lambda n: n and self.counters.incr("messages.expired", amount=n))
        d.addErrback(lambda f: self.log.failure("expiry sweep failed", f))
        return d

    def stats_line(self):
        """The stats line: every counter, and the store's sizes."""
        d = maybeDeferred(self.store.sizes)
        return d.addCallback(lambda sizes: f"stats: {self.counters.snapshot()} store={sizes}")


def make_provider_service(config, reactor=None, owner=None):
    """
    Build the provider for ``config``; its start creates the data
    directory, keys and certificate if they are missing.

    :param config: a :class:`nymprov.provider.config.ProviderConfig`.
    :param owner: ``(uid, gid)`` to give created files to, or ``None``.
    :returns: a :class:`ProviderService` (an ``IService``).
    """
    if reactor is None:
        from twisted.internet import reactor
    return ProviderService(config, reactor, stop_reactor_on_failure=True, owner=owner)
