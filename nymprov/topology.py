"""
What this node knows of the mixnet: the first-layer mix nodes.
"""

from zope.interface import implementer

from nymprov.interfaces import ITopology


@implementer(ITopology)
class StaticTopology:
    """
    A fixed set of first-layer mix node addresses, from the configuration.

    :param first_layer: iterable of 32-byte Nym node addresses.
    """

    def __init__(self, first_layer=()):
        self._first_layer = frozenset(first_layer)

    def is_first_layer(self, address):
        """ITopology API"""
        return address in self._first_layer
