"""
What the operator's HTTP API reads of a running node: its metrics, whether
it is ready, and what it is.  The provider and the mix node add their own
parts (store sizes, backend, client API) to this common base.
"""

from twisted.internet.defer import succeed

from nymprov._version import __version__
from nymprov.httpapi.health import Health
from nymprov.metrics import NodeMetrics
from nymprov.net.addresses import host_port_text, show_address
from nymprov.sphinx import PacketSize


class NodeStatus:
    """
    The status of a node service, read from its parts when asked.

    :param service: the node service: it has ``counters``, ``keys``,
        ``node`` (the core), ``sender``, ``running`` and ``when_started()``.
    :param str role: ``provider`` or ``mix``.
    :param store: the store or replay cache whose ``state`` must be
        ``open`` for the node to be ready.
    """

    def __init__(self, service, role, store):
        self.service = service
        self.role = role
        self.store = store
        #: The :class:`nymprov.httpapi.service.HttpApiService` serving
        #: this status, if any (its ports are described).
        self.http_api = None
        self._started = False
        service.when_started().addCallbacks(self._did_start, lambda failure: None)
        self.metrics = NodeMetrics(service.counters)
        self._add_gauges()

    def _did_start(self, _):
        self._started = True

    # -- metrics -------------------------------------------------------------

    def _add_gauges(self):
        service = self.service
        add = self.metrics.add_gauge
        add("build_info", "Always 1: the version and role, as labels",
            lambda: {(__version__, self.role): 1}, ("version", "role"))
        add("sphinx_keys", "1 per usable Sphinx key, by its epoch ('none' without epochs) and public key",
            lambda: {(epoch, key): 1 for epoch, key in self.sphinx_keys().items()}, ("epoch", "public_key"))
        add("epoch", "The current epoch (absent without epochs)", self._current_epoch)
        add("delayed_packets", "Forward hops waiting for their delay", lambda: service.node.delayed_count)
        add("neighbour_queue_depth", "Frames queued for a neighbour node",
            lambda: self._by_neighbour(0), ("neighbour",))
        add("neighbour_connected", "1 while a connection to the neighbour is up",
            lambda: self._by_neighbour(1), ("neighbour",))
        add("unwrap_workers", "Worker processes unwrapping packets beside the reactor",
            lambda: len(self._unwrapper.workers) if self._unwrapper is not None else 0)
        add("replay_tags", "Replay tags held for the live key",
            lambda: getattr(self.store, "replay_tag_count", None))
        add("ready", "1 when the node takes traffic (see /health)", lambda: int(self.health().ready))

    @property
    def _rotation(self):
        return getattr(self.service, "rotation", None)

    def _current_epoch(self):
        rotation = self._rotation
        if rotation is None:
            return None
        return rotation.ring.epochs.number_at(self.service._reactor.seconds())

    def sphinx_keys(self):
        """:returns: ``{epoch (text): public key (base58)}`` of the usable Sphinx keys."""
        rotation = self._rotation
        if rotation is None:
            return {"none": self.service.keys.sphinx.public_base58}
        usable = rotation.ring.usable(self.service._reactor.seconds())
        return {str(epoch): key.public_base58 for epoch, key in sorted(usable.items())}

    @property
    def _unwrapper(self):
        return getattr(self.service, "unwrapper", None)

    def _by_neighbour(self, index):
        depths = self.service.sender.queue_depths()
        return {(host_port_text(host, port),): int(value[index]) for (host, port), value in depths.items()}

    def refresh(self):
        """
        Read what has to be waited for before a scrape.

        :returns: a Deferred firing once the gauges are current.
        """
        return succeed(None)

    # -- health --------------------------------------------------------------

    def health(self):
        """:returns: a :class:`Health`: live, and ready or why not."""
        if not self.service.running:
            return Health.not_ready("node is stopping" if self._started else "node is not running")
        if not self._started:
            return Health.not_ready("node is starting")
        state = getattr(self.store, "state", "open")
        if state != "open":
            return Health.not_ready(f"store is {state}")
        if self.service.node.stopping:
            return Health.not_ready("node is stopping")
        return Health.ready_now()

    # -- description ---------------------------------------------------------

    def endpoints(self):
        """:returns: ``{what: [bound "host:port", ...]}``."""
        return {
            "mix_link": [show_address(port.getHost()) for port in self.service.mix_ports],
            "http": [show_address(port.getHost()) for port in getattr(self.http_api, "ports", ())],
        }

    def description(self):
        """:returns: what the node is, as a JSON-able dict."""
        keys = self.service.keys
        return {
            "version": __version__,
            "role": self.role,
            "identity_key": keys.identity_base58,
            "sphinx_keys": self.sphinx_keys(),
            "endpoints": self.endpoints(),
            "packet_sizes": [
                {"name": size.name.lower(), "tag": size.tag, "packet_bytes": size.packet_size,
                 "plaintext_bytes": size.plaintext}
                for size in sorted(PacketSize, key=lambda s: s.tag)
            ],
        }
