"""
A client's view of a network with a directory: the pinned directory's
documents, refreshed every epoch, seen as the topology of the epoch in
which a packet built now will be processed.
"""

from twisted.logger import Logger

from nymprov.errors import NymProvError
from nymprov.netdoc.epochs import Epochs
from nymprov.netdoc.fetch import DocumentFetcher, DocumentHolder, DocumentRefresher
from nymprov.netdoc.http import make_agent
from nymprov.topology import TopologyError

#: Seconds ahead for which keys are chosen: a packet built now is processed
#: within about this long (delays are a few tens of milliseconds a hop); the
#: nodes' grace period covers the stragglers.
DEFAULT_LEAD = 1.0


class NoNetwork(NymProvError):
    """No good network document gives a usable topology."""

    reason = "no_network"


class LiveTopology:
    """
    Behaves as the :class:`nymprov.topology.Topology` of the epoch in which
    a packet built now will be processed (``lead`` seconds from now), with
    each node's key for that epoch: ``layers``, ``providers``,
    ``provider(identity)`` and the rest are read from it on every use.

    :param holder: a :class:`nymprov.netdoc.fetch.DocumentHolder`.
    :param epochs: the network's :class:`nymprov.netdoc.Epochs`.
    :param clock: an ``IReactorTime``.
    :param float lead: seconds ahead.
    """

    def __init__(self, holder, epochs, clock, lead=DEFAULT_LEAD):
        self.holder = holder
        self.epochs = epochs
        self._clock = clock
        self._lead = lead
        self._cached = (None, None)
        self._last_good = None

    def epoch_of_next_packet(self, lead=None):
        """The epoch whose keys a packet built now is built for."""
        return self.epochs.number_at(self._clock.seconds() + (self._lead if lead is None else lead))

    def for_surbs(self):
        """
        The topology SURBs are built from: keys are taken as early as nodes
        accept them (``grace`` before their epoch), so that a SURB made
        near the end of an epoch is not handed out with only moments left.
        """
        latest = self.holder.latest
        grace = latest.parameters["grace"] if latest is not None else 0.0
        return self.current(max(self._lead, grace))

    def usable_until(self, epoch):
        """When packets (and SURBs) built for ``epoch``'s keys stop being accepted."""
        latest = self.holder.latest
        grace = latest.parameters["grace"] if latest is not None else 0.0
        return self.epochs.end_of(epoch) + grace

    def current(self, lead=None):
        """
        :returns: the ``Topology`` for the next packet; while no held
            document gives one, the last one that did.
        :raises NoNetwork: if none ever did.
        """
        target = self.epoch_of_next_packet(lead)
        for document in (self.holder.document_for(target), self.holder.document_for(target - 1), self.holder.latest):
            if document is None:
                continue
            key = (document.epoch, document.generated, target)
            if self._cached[0] == key:
                return self._cached[1]
            for epoch in (target, document.epoch):
                try:
                    topology = document.topology(epoch)
                except TopologyError:
                    continue
                if topology.layers and topology.providers:
                    self._cached = (key, topology)
                    self._last_good = topology
                    return topology
        if self._last_good is not None:
            return self._last_good
        raise NoNetwork(f"no network document with every layer and a provider for epoch {target}")

    def __getattr__(self, name):
        # Only reached for what LiveTopology itself lacks: the Topology API.
        return getattr(self.current(), name)


class ClientNetwork:
    """
    A client's link to a directory: fetches and checks the documents
    against the pinned key, refreshes them each epoch, and gives the
    :class:`LiveTopology` that routes are built from.

    :param reactor: the reactor.
    :param str url: the directory's base URL.
    :param bytes directory_key: the pinned 32-byte key.
    :param counters: a :class:`nymprov.metrics.Counters`.
    """

    log = Logger()

    def __init__(self, reactor, url, directory_key, counters):
        self._reactor = reactor
        agent = make_agent(reactor)
        self._pool = agent.connection_pool
        self.holder = DocumentHolder(directory_key, counters)
        self._fetcher = DocumentFetcher(agent, url, self.holder)
        self.refresher = None
        self.topology = None

    async def start(self, interval=None, lead=DEFAULT_LEAD):
        """
        Fetch the current document (its parameters give the epochs), then
        refresh every ``interval`` (a sixth of an epoch, at most 30 s).

        :returns: the :class:`LiveTopology`.
        :raises DocumentError: if the first document is refused.
        """
        document = await self._fetcher.fetch()
        epochs = Epochs(document.parameters["epoch_length"], document.parameters["epoch_zero"])
        if interval is None:
            interval = min(epochs.length / 6, 30.0)
        self.refresher = DocumentRefresher(self._fetcher, epochs, self._reactor, interval)
        await self.refresher.start()
        self.topology = LiveTopology(self.holder, epochs, self._reactor, lead)
        return self.topology

    async def stop(self):
        if self.refresher is not None:
            await self.refresher.stop()
        await self._pool.closeCachedConnections()
