"""
The provider as a Twisted service: its parts built from a configuration and
started and stopped in the right order.
"""

import hashlib

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks, maybeDeferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.protocols.policies import WrappingFactory
from twisted.protocols.tls import TLSMemoryBIOFactory

from nymprov.backends.inbox import InboxProvider
from nymprov.keys import load_or_create_keys
from nymprov.metrics import Counters
from nymprov.node import NodeCore
from nymprov.protocols.clientapi import ClientApiFactory
from nymprov.protocols.mixlink import MixLinkFactory
from nymprov.protocols.mixsender import MixSenderPool
from nymprov.sphinx import encode_address
from nymprov.storage.limits import StoreLimits
from nymprov.topology import provider_topology

#: How long stopping waits for open connections to close before aborting.
CLOSE_GRACE = 5.0  # seconds

#: How often expired messages and leases are swept.
EXPIRY_INTERVAL = 60.0  # seconds

_WILDCARD_HOSTS = {"0.0.0.0", "::", ""}


class _ConnectionTracker(WrappingFactory):
    """
    Knows the live connections of one listener, so that stopping the
    service can close them and wait until they are gone.
    """

    noisy = False

    def __init__(self, wrapped):
        WrappingFactory.__init__(self, wrapped)
        self._emptied = []

    def unregisterProtocol(self, protocol):
        WrappingFactory.unregisterProtocol(self, protocol)
        if not self.protocols:
            waiting, self._emptied = self._emptied, []
            for d in waiting:
                d.callback(None)

    def close_all(self, clock, grace):
        """
        Close every connection, aborting those still open after ``grace``.

        :returns: a Deferred firing once none is left.
        """
        if not self.protocols:
            return succeed(None)
        d = Deferred()
        self._emptied.append(d)
        for protocol in list(self.protocols):
            protocol.transport.loseConnection()

        def abort_stragglers():
            for protocol in list(self.protocols):
                protocol.transport.abortConnection()

        timer = clock.callLater(grace, abort_stragglers)
        return d.addBoth(lambda result: (timer.active() and timer.cancel(), result)[1])


def parse_host_port(value):
    """
    :param value: ``"host:port"``, ``"[v6]:port"`` or a ``(host, port)`` pair.
    :returns: ``(host, port)``.
    :raises ValueError: if ``value`` is neither.
    """
    if isinstance(value, (tuple, list)):
        host, port = value
        return str(host), int(port)
    host, sep, port = str(value).rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"not host:port: {value!r}")
    return host.strip("[]"), int(port)


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
    from nymprov.storage.sqlite import SQLiteStore

    # Replay tags are only meaningful for the key that produced them.
    key_id = hashlib.sha256(keys.sphinx.public_bytes).digest()
    return SQLiteStore(
        reactor, config.db_path, limits, replay_key_id=key_id, synchronous=config.db_synchronous
    )


class ProviderService(Service):
    """
    A whole provider node: store, node core, mix link in and out, client API
    and the periodic chores.

    Starting opens the store before any port listens; stopping closes the
    ports first, sends delayed packets on, lets the neighbour queues drain
    and commits the store last, so that nothing accepted is lost.

    :param config: a :class:`nymprov.config.ProviderConfig`.
    :param reactor: the reactor (injected, for tests).
    """

    log = Logger()
    name = "nym-provider"

    def __init__(self, config, reactor, *, stop_reactor_on_failure=False):
        self.config = config
        self._reactor = reactor
        self._stop_reactor_on_failure = stop_reactor_on_failure
        self.counters = Counters()
        self.keys = load_or_create_keys(config.data_dir)
        self.store = make_store(config, reactor, self.keys)
        self.backend = InboxProvider(self.store, reactor)
        self.sender = MixSenderPool(reactor, self.counters, queue_limit=config.mix_queue)
        self.topology = provider_topology(
            (encode_address(*parse_host_port(v)) for v in config.first_layer),
            getattr(config, "topology", None),
        )
        self.node = NodeCore(
            self.keys.sphinx,
            self.store,
            self.backend,
            self.sender,
            self.topology,
            reactor,
            self.counters,
            max_delay=config.max_delay,
        )
        self.certificate = None
        if config.client_tls:
            from nymprov.tls import load_or_create_certificate

            self.certificate = load_or_create_certificate(config.data_dir)
        self.mix_ports = []
        self.client_ports = []
        self._chores = []
        self._trackers = []
        self._start_outcome = None
        self._start_waiters = []

    # -- factories -----------------------------------------------------------

    def _mix_factory(self):
        return MixLinkFactory(
            self.node,
            self.counters,
            self._reactor,
            max_connections=self.config.max_connections,
            idle_timeout=self.config.idle_timeout,
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
            idle_timeout=config.idle_timeout,
        )
        if self.certificate is not None:
            from nymprov.tls import server_tls_options

            factory = TLSMemoryBIOFactory(server_tls_options(self.certificate), False, factory)
            factory.noisy = False
        return factory

    # -- life cycle ----------------------------------------------------------

    def startService(self):
        Service.startService(self)
        self._start_outcome = None
        self._start_waiters = []
        self._start().addBoth(self._started)

    def _started(self, outcome):
        if isinstance(outcome, Failure):
            self.log.failure("nym-provider could not start", outcome)
            if self._stop_reactor_on_failure and self._reactor.running:
                self._reactor.stop()
        else:
            outcome = self
        self._start_outcome = outcome
        waiters, self._start_waiters = self._start_waiters, []
        for d in waiters:
            self._fire(d, outcome)

    @staticmethod
    def _fire(d, outcome):
        if isinstance(outcome, Failure):
            d.errback(outcome)
        else:
            d.callback(outcome)

    def when_started(self):
        """
        :returns: a Deferred firing with this service once every port
            listens, or failing with the reason it could not start (tests
            use it to learn the ports bound to port 0).
        """
        d = Deferred()
        if self._start_outcome is None:
            self._start_waiters.append(d)
        else:
            self._fire(d, self._start_outcome)
        return d

    @inlineCallbacks
    def _start(self):
        yield maybeDeferred(self.store.start)
        mix_factory = self._tracked(self._mix_factory())
        for description in self.config.mix_listen:
            port = yield serverFromString(self._reactor, description).listen(mix_factory)
            self.mix_ports.append(port)
            address = port.getHost()
            self.log.info("Listening on {address} (mix link)", address=_show(address))
            if address.host not in _WILDCARD_HOSTS:
                self.node.add_own_address(encode_address(address.host, address.port))
        client_factory = self._tracked(self._client_factory())
        for description in self.config.client_listen:
            port = yield serverFromString(self._reactor, description).listen(client_factory)
            self.client_ports.append(port)
            self.log.info(
                "Listening on {address} (client API, {security})",
                address=_show(port.getHost()),
                security="TLS" if self.certificate is not None else "plain TCP",
            )
        self._start_chore(EXPIRY_INTERVAL, self._expire)
        if self.config.stats_interval > 0:
            self._start_chore(self.config.stats_interval, self._log_stats)

    def _tracked(self, factory):
        tracker = _ConnectionTracker(factory)
        self._trackers.append(tracker)
        return tracker

    def _start_chore(self, interval, chore):
        loop = LoopingCall(chore)
        loop.clock = self._reactor
        loop.start(interval, now=False)
        self._chores.append(loop)

    @inlineCallbacks
    def stopService(self):
        Service.stopService(self)
        for loop in self._chores:
            if loop.running:
                loop.stop()
        ports, self.mix_ports, self.client_ports = self.mix_ports + self.client_ports, [], []
        yield DeferredList([maybeDeferred(p.stopListening) for p in ports])
        yield DeferredList([t.close_all(self._reactor, CLOSE_GRACE) for t in self._trackers])
        self._trackers = []
        sent_early = self.node.stop()
        if sent_early:
            self.log.info("sent {count} delayed packets on at shutdown", count=sent_early)
        yield self.sender.stopService()
        yield self.store.close()
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


def _show(address):
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if host is None:
        return str(address)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def make_provider_service(config, reactor=None):
    """
    Build the provider for ``config``; creates the data directory, keys and
    certificate if they are missing.

    :param config: a :class:`nymprov.config.ProviderConfig`.
    :returns: a :class:`ProviderService` (an ``IService``).
    """
    if reactor is None:
        from twisted.internet import reactor
    return ProviderService(config, reactor, stop_reactor_on_failure=True)
