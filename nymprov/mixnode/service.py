"""
A mix node: the provider's node core and mix link without a client API or
inbox, as a Twisted service.
"""

from twisted.internet.defer import fail, inlineCallbacks
from twisted.logger import Logger
from zope.interface import implementer

from nymprov.errors import ConfigError, DeliveryError
from nymprov.interfaces import IProvider
from nymprov.keys import load_or_create_keys
from nymprov.metrics import Counters
from nymprov.node.core import NodeCore
from nymprov.node.mixlink import MixLinkFactory
from nymprov.node.mixsender import MixSenderPool
from nymprov.node.service import NodeService
from nymprov.storage.limits import StoreLimits
from nymprov.topology import load_topology


@implementer(IProvider)
class _NoFinalHops:
    """
    The backend of a mix node: it has none.  The node core refuses final
    hops at a mix before they reach a backend; this is here for the
    interface's sake and refuses too.
    """

    name = "none"

    def deliver(self, message):
        """IProvider API"""
        return fail(DeliveryError("a mix node delivers nothing"))


class MixNodeService(NodeService):
    """
    A mix node: replay cache, node core, mix link in and out.

    Starting opens the replay cache before any port listens; stopping closes
    the ports, sends delayed packets on at once, lets neighbour queues drain
    and commits the replay cache last.

    :param config: a :class:`MixNodeConfig` whose ``topology`` is set.
    :param reactor: the reactor (injected, for tests).
    :param topology: an ``ITopology`` to use instead of reading
        ``config.topology``.
    """

    log = Logger()
    name = "nym-mixnode"

    def __init__(self, config, reactor, *, topology=None, stop_reactor_on_failure=False):
        from nymprov.storage.sqlite import SQLiteStore

        if topology is None:
            if config.topology is None:
                raise ConfigError("--topology: a mix node needs the topology file to run")
            topology = load_topology(config.topology)
        self.config = config
        self.topology = topology
        NodeService.__init__(self, reactor, stop_reactor_on_failure)
        self.counters = Counters()
        self.keys = load_or_create_keys(config.data_dir)
        # The store is used only as the persistent IReplayCache; tags are
        # only meaningful for the key that produced them.
        self.replay_cache = SQLiteStore(
            reactor,
            config.replay_db_path,
            StoreLimits(),
            replay_key_id=self.keys.replay_key_id,
        )
        self.sender = MixSenderPool(reactor, self.counters, queue_limit=config.mix_queue)
        self.node = NodeCore(
            self.keys.sphinx,
            self.replay_cache,
            _NoFinalHops(),
            self.sender,
            self.topology,
            reactor,
            self.counters,
            max_delay=config.max_delay,
            max_delayed=config.max_delayed,
            role="mix",
        )
        self.mix_ports = []

    @inlineCallbacks
    def _start(self):
        yield self.replay_cache.start()
        own = self.keys.sphinx.public_bytes
        if not any(node.sphinx_key == own for node in getattr(self.topology, "nodes", ())):
            self.log.warn("this node's Sphinx key is not in the topology; no one will route here")
        factory = MixLinkFactory(
            self.node,
            self.counters,
            self._reactor,
            max_connections=self.config.max_connections,
            idle_timeout=self.config.idle_timeout,
        )
        self.mix_ports = yield self.listen(self.config.mix_listen, factory, "mix link", self.node)
        if self.config.stats_interval > 0:
            self.add_chore(self.config.stats_interval, self._log_stats)

    def _log_stats(self):
        self.log.info("stats: {counters}", counters=self.counters.snapshot())

    @inlineCallbacks
    def stopService(self):
        yield self._stop_listening()
        self.mix_ports = []
        sent_early = self.node.stop()
        if sent_early:
            self.log.info("sent {count} delayed packets on at shutdown", count=sent_early)
        yield self.sender.stopService()
        yield self.replay_cache.close()
        self.log.info("nym-mixnode stopped; counters: {counters}", counters=self.counters.snapshot())
