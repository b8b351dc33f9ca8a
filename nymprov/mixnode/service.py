"""
A mix node: the provider's node core and mix link without a client API or
inbox, as a tree of Twisted services (replay cache, mix sender, node core,
listeners, chores; see :mod:`nymprov.node.service`).
"""

import dataclasses

from twisted.internet.defer import fail, succeed
from twisted.logger import Logger
from zope.interface import implementer

from nymprov.errors import ConfigError, DeliveryError
from nymprov.interfaces import IProvider
from nymprov.metrics import Counters
from nymprov.node.core import NodeCore
from nymprov.node.datadir import DataDirectory
from nymprov.node.mixlink import MixLinkFactory
from nymprov.node.mixsender import MixSenderPool
from nymprov.node.pool import UnwrapPool
from nymprov.netdoc.signed import key_from_text
from nymprov.node.network import (
    DirectoryLink,
    DocumentTopology,
    KeyRotation,
    describe_node,
    make_epochs,
    published_address,
)
from nymprov.mixnode.status import MixNodeStatus
from nymprov.node.operator import http_listener, listening, serve_http, summary_part
from nymprov.node.reload import changed_fields, log_not_reloaded
from nymprov.node.service import DEFAULT_STOP_TIMEOUT, ListenerService, NodeCoreService, NodeService, Part, chore
from nymprov.storage.limits import StoreLimits
from nymprov.mixnode.fault import DroppingSender
from nymprov.node.loops import node_loops
from nymprov.topology import StaticTopology, SwappableTopology, Topology, load_topology


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
    A mix node: replay cache, mix link out, node core, mix link in.

    Its start binds the ports, then makes the data directory and keys (given
    to ``owner``), then opens the replay cache before any connection is
    accepted; stopping closes the ports, sends delayed packets on at once,
    lets neighbour queues drain and commits the replay cache last.

    :param config: a :class:`MixNodeConfig` whose ``topology`` is set.
    :param reactor: the reactor (injected, for tests).
    :param topology: an ``ITopology`` to use instead of reading
        ``config.topology``.
    :param owner: ``(uid, gid)`` that created files are given to, or ``None``.
    """

    log = Logger()
    name = "nym-mixnode"

    def __init__(self, config, reactor, *, topology=None, stop_reactor_on_failure=False, owner=None,
                 stop_timeout=DEFAULT_STOP_TIMEOUT):
        if topology is None:
            if config.topology is not None:
                topology = load_topology(config.topology)
            elif config.directory is not None:
                topology = StaticTopology()
            else:
                raise ConfigError("--topology: a mix node needs the topology file (or --directory) to run")
        NodeService.__init__(self, reactor, stop_reactor_on_failure, stop_timeout)
        self.config = config
        # The topology SIGHUP replaces (from --topology); with a directory,
        # the directory's document is consulted first.
        self.static_topology = SwappableTopology(topology)
        self.topology = self.static_topology
        self.counters = Counters()
        self.data = DataDirectory(config.data_dir, owner)
        self.keys = self.replay_cache = self.sender = self.node = self.unwrapper = None
        self.rotation = self.directory = self.loops = None
        self.status = None
        self.mix_listener = ListenerService(reactor, config.mix_listen, "mix link")
        self.http_listener = http_listener(reactor, config.http_listen)
        self.listeners = [self.mix_listener, self.http_listener]

    @property
    def mix_ports(self):
        """The mix link's listening ports."""
        return self.mix_listener.ports

    def assemble(self):
        """Make the data directory and keys if missing, and the parts."""
        if self.node is not None:
            return
        from nymprov.storage.sqlite import SQLiteStore

        config, reactor = self.config, self._reactor
        self.keys = self.data.keys()
        epochs = make_epochs(config.epoch_length, config.epoch_zero)
        if epochs is not None:
            # Keys by epoch, each with its own replay file.
            self.rotation = KeyRotation(config.data_dir, epochs, config.epoch_grace, reactor, self.counters)
        else:
            self.data.database(config.replay_db_path)
            # The store is used only as the persistent IReplayCache; tags
            # are only meaningful for the key that produced them.
            self.replay_cache = SQLiteStore(
                reactor,
                config.replay_db_path,
                StoreLimits(),
                replay_key_id=self.keys.replay_key_id,
            )
            self.replay_cache.setName("replay cache")
        if config.directory is not None:
            self.directory = DirectoryLink(
                reactor, config.directory, key_from_text(config.directory_key, "--directory-key"),
                self.keys.identity, self._describe, epochs, config.publish_interval, self.counters,
            )
            self.topology = DocumentTopology(self.directory.holder, self.topology)
        self.sender = MixSenderPool(reactor, self.counters, queue_limit=config.mix_queue)
        link_sender = self.sender
        if config.fault_drop > 0:
            link_sender = DroppingSender(self.sender, config.fault_drop, self.counters)
            self.log.warn("FAULT INJECTION: this mix node drops {share:.0%} of the packets it should forward"
                          " (--fault-drop)", share=config.fault_drop)
        # Worker processes for the unwrapping, as a provider's; they hold one
        # key, so a node with epochs unwraps on the reactor thread.
        use_workers = config.unwrap_workers and self.rotation is None
        self.unwrapper = UnwrapPool(reactor, self.keys.sphinx, config.unwrap_workers) if use_workers else None
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
            unwrapper=self.unwrapper,
            keys=None if self.rotation is None else self.rotation.keys,
        )
        # Loops take each epoch's keys from the directory's documents; a
        # topology file's keys are good only while keys do not rotate.
        topology = self.topology if not isinstance(self.topology, DocumentTopology) and self.rotation is None else None
        following = self.directory is not None and epochs is not None
        self.loops = node_loops(self.node, self.keys.identity_public_bytes, self.keys.sphinx.public_bytes,
                                topology if isinstance(topology, Topology) else None, link_sender,
                                reactor, self.counters, config, self.name,
                                holder=self.directory.holder if following else None,
                                epochs=epochs if following else None)
        own = self.keys.sphinx.public_bytes
        if self.rotation is None and not any(node.sphinx_key == own for node in getattr(self.topology, "nodes", ())):
            self.log.warn("this node's Sphinx key is not in the topology; no one will route here")
        factory = MixLinkFactory(
            self.node,
            self.counters,
            reactor,
            max_connections=config.max_connections,
            max_connections_per_ip=config.max_connections_per_ip,
            idle_timeout=config.idle_timeout,
            frame_timeout=config.frame_timeout,
        )
        self.mix_listener.serve(factory, self.node)
        self.status = MixNodeStatus(self)
        serve_http(self.http_listener, self.status)
        # First: it answers /health while the rest starts and stops.
        parts = [self.http_listener]
        if self.rotation is not None:
            parts.append(Part("key rotation", self.rotation.start, self.rotation.stop))
        else:
            parts.append(self.replay_cache)
        if self.unwrapper is not None:
            parts.append(self.unwrapper)
        parts += [self.sender, NodeCoreService(self.node, reactor), self.mix_listener]
        if self.directory is not None:
            # Its start is not waited for: an unreachable directory must not
            # stop the node.
            parts.append(Part("directory", lambda: self.directory.start() and None, self.directory.stop))
        if self.loops is not None:
            parts.append(Part("node loops", self.loops.start, self.loops.stop))
        if self.rotation is not None:
            parts.append(chore(reactor, self.rotation.check_interval, self.rotation.tick, "key rotation tick"))
        if config.stats_interval > 0:
            parts.append(chore(reactor, config.stats_interval, self.log_stats, "stats", at_start=False))
        parts.append(summary_part(self, self._summary))
        for part in parts:
            part.setServiceParent(self)

    def _describe(self, timestamp):
        address = published_address(self.mix_ports)
        describe = describe_node("mix", self.keys.identity_public_bytes, address, self.rotation, layer=self.config.layer)
        return describe(timestamp)

    def _summary(self):
        config = self.config
        keys = ", ".join(f"{epoch}: {key}" if epoch != "none" else key
                         for epoch, key in self.status.sphinx_keys().items())
        topology = config.topology or "none"
        if self.directory is not None:
            topology += f", directory {config.directory}"
        nodes = len(getattr(self.static_topology, "nodes", ()))
        return (f"identity {self.keys.identity_base58}, sphinx key {keys}, layer {config.layer};"
                f" mix link {listening(self.mix_listener)}, HTTP API {listening(self.http_listener)};"
                f" topology {topology} ({nodes} nodes)")

    def reload(self, config):
        """
        Apply what can change of ``config`` while the node runs (SIGHUP):
        the topology file.

        :returns: ``(reloaded, not reloaded)``: lists of setting names.
        """
        fields = changed_fields(self.config, config)
        applied = []
        # Read again even under the same name: its contents are what changes.
        if config.topology is not None:
            # Read first: a bad file leaves the running topology as it was.
            self.static_topology.replace(load_topology(config.topology))
            applied.append("topology")
        self.config = dataclasses.replace(self.config, **{f: getattr(config, f) for f in applied})
        return applied, log_not_reloaded(self.log, fields, applied)

    def forget_created(self):
        self.data.remove_created()

    def stats_line(self):
        """The stats line: every counter."""
        return succeed(f"stats: {self.counters.snapshot()}")
