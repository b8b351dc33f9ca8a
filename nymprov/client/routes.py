"""Choosing routes through the mix layers, with Poisson delays, and building packets on them."""

import random

from nymprov.sphinx import SURB, Destination, PacketSize, build_packet, poisson_delays
from nymprov.sphinx.params import IDENTIFIER_LENGTH, MAX_PATH_LENGTH

NANOSECONDS = 1_000_000_000


class Router:
    """
    Builds packets over random routes: one mix per layer, chosen afresh for
    every packet, then the recipient's provider.

    :param topology: a :class:`nymprov.topology.Topology`.
    :param own_provider: this client's :class:`nymprov.topology.ProviderNode`.
    :param float mean_delay: mean per-hop delay, in seconds.
    :param bool loopix: ``True`` to make the own provider the first hop
        (Loopix); ``False`` to hand packets to it for the first layer (Nym).
    :param rng: a ``random.Random``; ``SystemRandom`` by default.
    """

    def __init__(self, topology, own_provider, mean_delay=0.05, loopix=False, rng=None):
        if not topology.layers:
            raise ValueError("the topology has no mix layers")
        hops = len(topology.layers) + 1 + (1 if loopix else 0)
        if hops > MAX_PATH_LENGTH:
            raise ValueError(f"a route of {hops} hops is longer than Sphinx's {MAX_PATH_LENGTH}")
        self._topology = topology
        self._own_provider = own_provider
        self._mean_ns = int(mean_delay * NANOSECONDS)
        self._loopix = loopix
        self._rng = rng or random.SystemRandom()

    @property
    def hops(self):
        """Hops of a forward route, provider(s) included."""
        return len(self._topology.layers) + 1 + (1 if self._loopix else 0)

    def _snapshot(self, surb=False):
        # With a directory the topology follows the epochs (a LiveTopology):
        # one packet takes every key from one epoch's topology.
        current = getattr(self._topology, "for_surbs" if surb else "current", None)
        return current() if current is not None else self._topology

    @staticmethod
    def _provider(topology, provider):
        # Looked up again by identity, for the provider's key of the epoch.
        try:
            return topology.provider(provider.identity)
        except KeyError:
            return provider

    def _mixes(self, topology):
        return [self._rng.choice(nodes).route_node for _, nodes in sorted(topology.layers.items())]

    def _delays(self, count):
        if self._mean_ns <= 0:
            return [0] * count
        # The last hop is a provider, which does not delay.
        return poisson_delays(self._mean_ns, count - 1, self._rng) + [0]

    def forward(self, message, recipient_identity, recipient_provider):
        """
        A regular packet carrying ``message`` to ``recipient_identity`` at
        ``recipient_provider``.

        :returns: ``(first_hop, packet)`` to hand to the own provider.
        """
        topology = self._snapshot()
        route = self._mixes(topology) + [self._provider(topology, recipient_provider).route_node]
        if self._loopix:
            route.insert(0, self._provider(topology, self._own_provider).route_node)
        destination = Destination(recipient_identity, self._rng.randbytes(IDENTIFIER_LENGTH))
        packet = build_packet(message, route, self._delays(len(route)), destination)
        return route[0].address, packet

    def surb_to_self(self, own_identity):
        """
        A SURB leading through the layers to this client's provider.  Its
        first hop is a first-layer mix, as providers relay SURB packets
        unchanged.
        """
        topology = self._snapshot(surb=True)
        route = self._mixes(topology) + [self._provider(topology, self._own_provider).route_node]
        destination = Destination(own_identity, self._rng.randbytes(IDENTIFIER_LENGTH))
        return SURB.create(route, self._delays(len(route)), destination)

    def ack(self, own_identity, ack_envelope):
        """
        A SURB-ACK: an ACK-size packet back to this client.

        :returns: ``(first_hop, packet)`` for the recipient's provider to send.
        """
        return self.surb_to_self(own_identity).use(ack_envelope, PacketSize.ACK.payload_size)
