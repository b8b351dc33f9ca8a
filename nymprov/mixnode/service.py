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
from nymprov.netdoc.signed import key_from_text
from nymprov.node.network import (
    DirectoryLink,
    DocumentTopology,
    KeyRotation,
    describe_node,
    make_epochs,
    published_address,
)
from nymprov.node.service import NodeService
from nymprov.storage.limits import StoreLimits
from nymprov.mixnode.fault import DroppingSender
from nymprov.node.loops import node_loops
from nymprov.topology import StaticTopology, Topology, load_topology


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
            if config.topology is not None:
                topology = load_topology(config.topology)
            elif config.directory is not None:
                topology = StaticTopology()
            else:
                raise ConfigError("--topology: a mix node needs the topology file (or --directory) to run")
        self.config = config
        NodeService.__init__(self, reactor, stop_reactor_on_failure)
        self.counters = Counters()
        self.keys = load_or_create_keys(config.data_dir)
        epochs = make_epochs(config.epoch_length, config.epoch_zero)
        self.rotation = None
        self.replay_cache = None
        if epochs is not None:
            # Keys by epoch, each with its own replay file.
            self.rotation = KeyRotation(config.data_dir, epochs, config.epoch_grace, reactor, self.counters)
        else:
            # The store is used only as the persistent IReplayCache; tags
            # are only meaningful for the key that produced them.
            self.replay_cache = SQLiteStore(
                reactor,
                config.replay_db_path,
                StoreLimits(),
                replay_key_id=self.keys.replay_key_id,
            )
        self.directory = None
        if config.directory is not None:
            self.directory = DirectoryLink(
                reactor, config.directory, key_from_text(config.directory_key, "--directory-key"),
                self.keys.identity, self._describe, epochs, config.publish_interval, self.counters,
            )
            topology = DocumentTopology(self.directory.holder, topology)
        self.topology = topology
        self.sender = MixSenderPool(reactor, self.counters, queue_limit=config.mix_queue)
        link_sender = self.sender
        if config.fault_drop > 0:
            link_sender = DroppingSender(self.sender, config.fault_drop, self.counters)
        self.node = NodeCore(
            self.keys.sphinx,
            self.replay_cache,
            _NoFinalHops(),
            link_sender,
            self.topology,
            reactor,
            self.counters,
            max_delay=config.max_delay,
            max_delayed=config.max_delayed,
            role="mix",
            keys=None if self.rotation is None else self.rotation.keys,
        )
        self.loops = node_loops(self.node, self.keys.identity_public_bytes, self.keys.sphinx.public_bytes,
                                topology if isinstance(topology, Topology) else None, link_sender,
                                reactor, self.counters, config, self.name)
        self.mix_ports = []

    def _describe(self, timestamp):
        address = published_address(self.mix_ports)
        describe = describe_node("mix", self.keys.identity_public_bytes, address, self.rotation, layer=self.config.layer)
        return describe(timestamp)

    @inlineCallbacks
    def _start(self):
        if self.rotation is not None:
            yield self.rotation.start()
            self.add_chore(self.rotation.check_interval, self.rotation.tick)
        else:
            yield self.replay_cache.start()
        own = self.keys.sphinx.public_bytes
        if self.rotation is None and not any(node.sphinx_key == own for node in getattr(self.topology, "nodes", ())):
            self.log.warn("this node's Sphinx key is not in the topology; no one will route here")
        factory = MixLinkFactory(
            self.node,
            self.counters,
            self._reactor,
            max_connections=self.config.max_connections,
            idle_timeout=self.config.idle_timeout,
        )
        self.mix_ports = yield self.listen(self.config.mix_listen, factory, "mix link", self.node)
        if self.directory is not None:
            # Not waited for: an unreachable directory must not stop the node.
            self.directory.start()
        if self.config.fault_drop > 0:
            self.log.warn("FAULT INJECTION: this mix node drops {share:.0%} of the packets it should forward"
                          " (--fault-drop)", share=self.config.fault_drop)
        if self.loops is not None:
            self.loops.start()
        if self.config.stats_interval > 0:
            self.add_chore(self.config.stats_interval, self._log_stats)

    def _log_stats(self):
        self.log.info("stats: {counters}", counters=self.counters.snapshot())

    @inlineCallbacks
    def stopService(self):
        yield self._stop_listening()
        if self.loops is not None:
            self.loops.stop()
        self.mix_ports = []
        if self.directory is not None:
            yield self.directory.stop()
        sent_early = self.node.stop()
        if sent_early:
            self.log.info("sent {count} delayed packets on at shutdown", count=sent_early)
        yield self.sender.stopService()
        if self.rotation is not None:
            yield self.rotation.stop()
        else:
            yield self.replay_cache.close()
        self.log.info("nym-mixnode stopped; counters: {counters}", counters=self.counters.snapshot())
