"""
Per-hop mixing delays: exponential samples, as Loopix's Poisson mixing asks.
"""

import random

from nymprov.sphinx.params import MAX_DELAY_NS


def poisson_delays(mean_ns: int, count: int, rng=None) -> list:
    """
    :param mean_ns: the mean delay in nanoseconds; 0 gives no delay.
    :param count: how many delays (one per hop).
    :param rng: a :class:`random.Random`; ``random.SystemRandom()`` if
        ``None`` (the delays hide timing, so they must not be predictable).
    :returns: ``count`` integer nanoseconds, each at most 2^64 - 1.
    """
    if mean_ns < 0 or count < 0:
        raise ValueError("the mean delay and the count must not be negative")
    if mean_ns == 0:
        return [0] * count
    if rng is None:
        rng = random.SystemRandom()
    rate = 1.0 / mean_ns
    return [min(round(rng.expovariate(rate)), MAX_DELAY_NS) for _ in range(count)]
