"""
Fault injection for tests: a mix node that drops a share of the packets it
should forward, as a broken or hostile node would (``--fault-drop``).  Off
by default; a node run so logs a warning at start.
"""

import random

from zope.interface import implementer

from nymprov.interfaces import IMixSender


@implementer(IMixSender)
class DroppingSender:
    """
    Passes packets to ``sender`` except a random ``share`` of them, which
    it drops silently (reporting them queued, as a dishonest node would),
    counting each as ``fault.dropped``.
    """

    def __init__(self, sender, share, counters, rng=None):
        self._sender = sender
        self._share = share
        self._counters = counters
        self._rng = rng or random.Random()

    def send(self, address, packet, key_rotation=0):
        """IMixSender API"""
        if self._rng.random() < self._share:
            self._counters.incr("fault.dropped")
            return True
        return self._sender.send(address, packet, key_rotation)
