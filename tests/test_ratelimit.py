"""
Tests for nymprov.net.ratelimit.
"""

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from nymprov.net.ratelimit import TokenBucketLimiter


class TokenBucketTests(SynchronousTestCase):
    """
    A key gets its burst, then its rate.
    """

    def setUp(self):
        self.clock = Clock()
        self.limiter = TokenBucketLimiter(self.clock, rate=2.0, burst=3)

    def test_burst_then_refused(self):
        """
        A fresh key may act ``burst`` times at once, then is refused.
        """
        self.assertEqual([self.limiter.allow("a") for _ in range(4)], [True] * 3 + [False])

    def test_refill_at_rate(self):
        """
        An empty bucket gains ``rate`` tokens per second.
        """
        for _ in range(3):
            self.limiter.allow("a")
        self.clock.advance(0.49)
        self.assertFalse(self.limiter.allow("a"))
        self.clock.advance(0.01)
        self.assertTrue(self.limiter.allow("a"))
        self.assertFalse(self.limiter.allow("a"))

    def test_refill_capped_at_burst(self):
        """
        A long idle time refills to ``burst`` and no further.
        """
        self.limiter.allow("a")
        self.clock.advance(1000)
        self.assertEqual([self.limiter.allow("a") for _ in range(4)], [True] * 3 + [False])

    def test_keys_independent(self):
        """
        One key's spending does not touch another's bucket.
        """
        for _ in range(3):
            self.limiter.allow("a")
        self.assertFalse(self.limiter.allow("a"))
        self.assertTrue(self.limiter.allow("b"))

    def test_refused_spends_nothing(self):
        """
        Refused attempts do not push the next allowed time further out.
        """
        for _ in range(3):
            self.limiter.allow("a")
        for _ in range(10):
            self.assertFalse(self.limiter.allow("a"))
        self.clock.advance(0.5)
        self.assertTrue(self.limiter.allow("a"))

    def test_clock_backwards(self):
        """
        A clock stepped backwards neither refills nor drains.
        """
        self.clock.advance(100)
        self.limiter.allow("a")
        self.clock.rightNow = 50.0
        self.assertEqual([self.limiter.allow("a") for _ in range(3)], [True, True, False])

    def test_slow_rate(self):
        """
        Five per hour: the sixth attempt waits 720 seconds.
        """
        limiter = TokenBucketLimiter(self.clock, rate=5 / 3600.0, burst=5)
        self.assertEqual([limiter.allow("ip") for _ in range(6)], [True] * 5 + [False])
        self.clock.advance(719)
        self.assertFalse(limiter.allow("ip"))
        self.clock.advance(1)
        self.assertTrue(limiter.allow("ip"))

    def test_bad_parameters(self):
        """
        A zero rate, a burst below 1 or no room for keys is refused.
        """
        self.assertRaises(ValueError, TokenBucketLimiter, self.clock, 0, 1)
        self.assertRaises(ValueError, TokenBucketLimiter, self.clock, 1, 0.5)
        self.assertRaises(ValueError, TokenBucketLimiter, self.clock, 1, 1, max_keys=0)


class BoundedMemoryTests(SynchronousTestCase):
    """
    The number of buckets never exceeds ``max_keys``.
    """

    @settings(max_examples=50)
    @given(st.lists(st.integers(0, 40), max_size=200))
    def test_bounded(self, keys):
        """
        However many keys act, at most ``max_keys`` buckets are kept.
        """
        limiter = TokenBucketLimiter(Clock(), rate=1.0, burst=2, max_keys=8)
        for key in keys:
            limiter.allow(key)
            self.assertLessEqual(len(limiter), 8)

    def test_least_recently_used_evicted(self):
        """
        The least recently used key loses its bucket; recent ones keep theirs.
        """
        clock = Clock()
        limiter = TokenBucketLimiter(clock, rate=0.001, burst=1, max_keys=2)
        self.assertTrue(limiter.allow("old"))
        self.assertTrue(limiter.allow("recent"))
        self.assertFalse(limiter.allow("old"))  # "old" is now the most recent
        self.assertTrue(limiter.allow("new"))  # evicts "recent"
        self.assertFalse(limiter.allow("old"))
        self.assertTrue(limiter.allow("recent"))  # came back with a full bucket

    def test_forget_idle(self):
        """
        forget_idle drops refilled buckets and keeps partly spent ones.
        """
        clock = Clock()
        limiter = TokenBucketLimiter(clock, rate=1.0, burst=2)
        limiter.allow("a")
        clock.advance(2)
        limiter.allow("b")
        self.assertEqual(limiter.forget_idle(), 1)
        self.assertEqual(len(limiter), 1)
        self.assertTrue(limiter.allow("b"))
        self.assertFalse(limiter.allow("b"))
