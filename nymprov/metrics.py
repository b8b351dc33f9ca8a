"""
Counters of packet fates and other events, kept in memory.

Counters are plain integers keyed by name; a reason is folded into the name
(``dropped.replay``) so that a snapshot is a flat, JSON-friendly dict.
"""

from collections import Counter


class Counters:
    """
    A set of monotonically increasing event counters.
    """

    def __init__(self):
        self._counts = Counter()

    def incr(self, name, reason=None, amount=1):
        """
        Add ``amount`` to counter ``name`` (or ``name.reason``).
        """
        key = name if reason is None else f"{name}.{reason}"
        self._counts[key] += amount

    def get(self, name, reason=None):
        """
        :returns: the current value of ``name`` (or ``name.reason``).
        """
        key = name if reason is None else f"{name}.{reason}"
        return self._counts[key]

    def snapshot(self):
        """
        :returns: a sorted copy of every counter, for logs and tests.
        """
        return dict(sorted(self._counts.items()))
