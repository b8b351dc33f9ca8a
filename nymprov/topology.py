"""
What this node knows of the mixnet: the first-layer mix nodes.
"""

from zope.interface import implementer

from nymprov.interfaces import ITopology


@implementer(ITopology)
class StaticTopology:
    """
    Fixed sets of node addresses, from the configuration.

    :param first_layer: iterable of 32-byte addresses of first-layer mixes.
    :param other_nodes: iterable of 32-byte addresses of every other node
        (later layers and providers).
    """

    def __init__(self, first_layer=(), other_nodes=()):
        self._first_layer = frozenset(first_layer)
        self._known = self._first_layer | frozenset(other_nodes)

    def is_first_layer(self, address):
        """ITopology API"""
        return address in self._first_layer

    def is_known_node(self, address):
        """ITopology API"""
        return address in self._known
