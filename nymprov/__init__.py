"""
nymprov: a Nym mixnet provider node on Twisted.

The packet format lives in :mod:`nymprov.sphinx`, the wire codecs in
:mod:`nymprov.wire`, the node in :mod:`nymprov.node.core` and the service tree
in :mod:`nymprov.provider.service`.
"""

from nymprov._version import __version__

__all__ = ["__version__"]
