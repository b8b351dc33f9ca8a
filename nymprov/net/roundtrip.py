"""
RFC 6298's retransmission timeout, for whatever waits for an
acknowledgement through the mixnet: a stream's frames, a client's packets.

Written by hand: Twisted has no such estimator, and it is a few lines.
"""


class RetransmissionTimeout:
    """
    Before any sample, ``initial`` (as given); then the smoothed round trip
    plus four times its variation, kept within ``[minimum, maximum]``.

    Callers feed it only unambiguous round trips: of something sent once,
    or of one identified sending (Karn's rule).
    """

    def __init__(self, initial, minimum, maximum):
        if not 0 < minimum <= maximum:
            raise ValueError("0 < minimum <= maximum is needed")
        self.minimum = minimum
        self.maximum = maximum
        self.timeout = initial
        self.smoothed = None
        self.variation = None

    def sample(self, seconds):
        """Take one measured round trip."""
        if self.smoothed is None:
            self.smoothed, self.variation = seconds, seconds / 2
        else:
            self.variation = 0.75 * self.variation + 0.25 * abs(self.smoothed - seconds)
            self.smoothed = 0.875 * self.smoothed + 0.125 * seconds
        self.timeout = min(max(self.smoothed + 4 * self.variation, self.minimum), self.maximum)

    def for_attempt(self, attempt):
        """:returns: the wait after the ``attempt``-th sending (from 1): doubled per earlier one, up to the maximum."""
        return min(self.timeout * 2 ** (attempt - 1), self.maximum)
