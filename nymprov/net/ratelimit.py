"""
Token-bucket rate limits keyed by client IP or client address.
"""

from collections import OrderedDict


class TokenBucketLimiter:
    """
    One token bucket per key: a key may spend ``burst`` actions at once and
    then ``rate`` actions per second.

    Memory is bounded by ``max_keys``.  Buckets are kept in least recently
    used order and the least recently used one is dropped to make room.
    Dropping a bucket can only make the limit more lenient for that key
    (it comes back full), and an attacker needs more than ``max_keys``
    distinct keys to cause it, by which time each key already has its own
    burst anyway; so eviction never locks out a legitimate client.

    :param clock: provides ``seconds()`` (a reactor or ``task.Clock``).
    :param float rate: tokens added per second.
    :param float burst: bucket capacity, at least 1.
    :param int max_keys: most buckets kept at once.
    """

    def __init__(self, clock, rate, burst, max_keys=65536):
        if rate <= 0 or burst < 1 or max_keys < 1:
            raise ValueError("rate must be > 0, burst >= 1 and max_keys >= 1")
        self._clock = clock
        self.rate = float(rate)
        self.burst = float(burst)
        self.max_keys = max_keys
        # key -> [tokens, time of last update]
        self._buckets = OrderedDict()

    def allow(self, key):
        """
        Spend one token of ``key``'s bucket if it has one.

        :returns: ``True`` if the action is allowed, ``False`` if the key is
            over its rate (no token is spent then).
        """
        now = self._clock.seconds()
        bucket = self._buckets.get(key)
        if bucket is None:
            self._make_room()
            bucket = self._buckets[key] = [self.burst, now]
        else:
            self._buckets.move_to_end(key)
            # max(): a clock stepped backwards must not drain the bucket.
            elapsed = max(0.0, now - bucket[1])
            bucket[0] = min(self.burst, bucket[0] + elapsed * self.rate)
            bucket[1] = now
        if bucket[0] >= 1.0:
            bucket[0] -= 1.0
            return True
        return False

    def _make_room(self):
        while len(self._buckets) >= self.max_keys:
            self._buckets.popitem(last=False)

    def forget_idle(self):
        """
        Drop every bucket that has refilled completely: such a bucket is
        the same as no bucket.  Call it now and then to return memory.

        :returns: how many buckets were dropped.
        """
        now = self._clock.seconds()
        full = [
            key
            for key, (tokens, last) in self._buckets.items()
            if tokens + max(0.0, now - last) * self.rate >= self.burst
        ]
        for key in full:
            del self._buckets[key]
        return len(full)

    def __len__(self):
        return len(self._buckets)
