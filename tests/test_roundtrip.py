"""RFC 6298's retransmission timeout (``nymprov.net.roundtrip``)."""

from hypothesis import given, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from nymprov.net.roundtrip import RetransmissionTimeout


class RetransmissionTimeoutTests(SynchronousTestCase):
    def test_first_sample_then_smoothing(self):
        """RFC 6298 §2: R, R/2 at first; then the 1/8 and 1/4 gains."""
        rto = RetransmissionTimeout(3.0, 0.25, 60.0)
        self.assertEqual(rto.timeout, 3.0)
        rto.sample(1.0)
        self.assertEqual((rto.smoothed, rto.variation, rto.timeout), (1.0, 0.5, 3.0))
        rto.sample(2.0)
        self.assertEqual(rto.variation, 0.75 * 0.5 + 0.25 * 1.0)
        self.assertEqual(rto.smoothed, 0.875 * 1.0 + 0.125 * 2.0)
        self.assertEqual(rto.timeout, rto.smoothed + 4 * rto.variation)

    def test_bounds(self):
        """Steady fast round trips stop at the minimum, slow ones at the maximum."""
        rto = RetransmissionTimeout(3.0, 0.4, 5.0)
        for _ in range(100):
            rto.sample(0.01)
        self.assertEqual(rto.timeout, 0.4)
        for _ in range(100):
            rto.sample(30.0)
        self.assertEqual(rto.timeout, 5.0)

    def test_backoff_per_attempt(self):
        """Each earlier attempt doubles the wait, up to the maximum."""
        rto = RetransmissionTimeout(1.0, 0.25, 6.0)
        self.assertEqual([rto.for_attempt(n) for n in (1, 2, 3, 4)], [1.0, 2.0, 4.0, 6.0])

    def test_refuses_empty_range(self):
        self.assertRaises(ValueError, RetransmissionTimeout, 1.0, 2.0, 1.0)
        self.assertRaises(ValueError, RetransmissionTimeout, 1.0, 0.0, 1.0)

    @given(st.lists(st.floats(min_value=0.0, max_value=1e4, allow_nan=False), max_size=50))
    def test_always_within_bounds(self, samples):
        rto = RetransmissionTimeout(2.0, 0.5, 60.0)
        for seconds in samples:
            rto.sample(seconds)
            self.assertTrue(0.5 <= rto.timeout <= 60.0)
