"""
Time cut into epochs: epoch ``n`` runs from ``start + n * length``
(included) to ``start + (n + 1) * length`` (excluded).
"""

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Epochs:
    """
    :ivar float length: seconds per epoch (an hour in production, seconds
        in tests).
    :ivar float start: when epoch 0 began, in seconds since the Unix epoch.
    """

    length: float
    start: float = 0.0

    def __post_init__(self):
        if not (isinstance(self.length, (int, float)) and math.isfinite(self.length) and self.length > 0):
            raise ValueError(f"an epoch length is a positive number of seconds, got {self.length!r}")

    def number_at(self, when):
        """:returns: the epoch that ``when`` (seconds) falls in."""
        return math.floor((when - self.start) / self.length)

    def start_of(self, number):
        """:returns: when epoch ``number`` begins."""
        return self.start + number * self.length

    def end_of(self, number):
        """:returns: when epoch ``number`` ends (the next one begins)."""
        return self.start + (number + 1) * self.length

    def until_next(self, when):
        """:returns: seconds from ``when`` to the start of the next epoch."""
        return self.end_of(self.number_at(when)) - when
