"""
The one Reassembler (nymprov.wire.fragments) with the bounds a service
chooses: refusal when full, a size bound, a timeout, remembered ids.  The
client's uses of it are in test_client_parts.
"""

from hypothesis import given, settings, strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from nymprov.wire.fragments import Fragment, MalformedFragment, Reassembler, ReassemblyFull, split_message


def ids(n):
    """``n`` distinct message ids."""
    return [bytes([i]) * 16 for i in range(n)]


class BoundsTests(SynchronousTestCase):
    """Every bound holds, and a refused fragment changes nothing."""

    def test_refuses_new_messages_when_full(self):
        """Without eviction, a new message at the bound is refused; the kept ones still complete."""
        a, b = ids(2)
        joiner = Reassembler(max_partial=1, evict_oldest=False)
        self.assertIsNone(joiner.add(Fragment(a, 0, 2, b"1")))
        self.assertRaises(ReassemblyFull, joiner.add, Fragment(b, 0, 2, b"x"))
        self.assertEqual(joiner.add(Fragment(a, 1, 2, b"2")), b"12")
        self.assertIsNone(joiner.add(Fragment(b, 0, 2, b"x")))

    def test_evicts_the_oldest_when_asked(self):
        """With eviction, the oldest incomplete message goes to make room."""
        a, b = ids(2)
        joiner = Reassembler(max_partial=1)
        joiner.add(Fragment(a, 0, 2, b"1"))
        joiner.add(Fragment(b, 0, 2, b"x"))
        self.assertEqual(joiner.partial_count, 1)
        self.assertIsNone(joiner.add(Fragment(a, 1, 2, b"2")))

    def test_size_bound(self):
        """A fragment that would take a message past max_bytes is refused; the message stays as it was."""
        [a] = ids(1)
        joiner = Reassembler(max_bytes=4)
        joiner.add(Fragment(a, 0, 2, b"123"))
        self.assertRaises(ReassemblyFull, joiner.add, Fragment(a, 1, 2, b"45"))
        self.assertEqual(joiner.add(Fragment(a, 1, 2, b"4")), b"1234")
        self.assertRaises(ReassemblyFull, joiner.add, Fragment(ids(2)[1], 0, 1, b"12345"))

    def test_timeout(self):
        """An incomplete message is forgotten its timeout after its first fragment, not before."""
        a, b = ids(2)
        clock = Clock()
        joiner = Reassembler(clock=clock, timeout=10, max_partial=1, evict_oldest=False)
        joiner.add(Fragment(a, 0, 2, b"1"))
        clock.advance(9.5)
        self.assertRaises(ReassemblyFull, joiner.add, Fragment(b, 0, 2, b"x"))
        clock.advance(0.5)
        self.assertEqual(joiner.partial_count, 0)
        self.assertIsNone(joiner.add(Fragment(b, 0, 2, b"x")))
        # a's first half is gone: its second would start it again.
        self.assertRaises(ReassemblyFull, joiner.add, Fragment(a, 1, 2, b"2"))
        self.assertRaises(ValueError, Reassembler, timeout=1)

    def test_remembered_ids_are_bounded_and_forgettable(self):
        """Copies of completed messages are ignored while remembered; forget() lets one come again."""
        a, b, c = ids(3)
        joiner = Reassembler(remember=2)
        for message_id in (a, b):
            self.assertEqual(joiner.add(Fragment(message_id, 0, 1, b"m")), b"m")
            self.assertIsNone(joiner.add(Fragment(message_id, 0, 1, b"m")))
        joiner.forget(b)
        self.assertEqual(joiner.add(Fragment(b, 0, 1, b"m")), b"m")
        joiner.add(Fragment(c, 0, 1, b"m"))
        self.assertEqual(joiner.add(Fragment(a, 0, 1, b"m")), b"m")

    @settings(max_examples=100)
    @given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(1, 4), st.binary(max_size=8)),
                    max_size=60))
    def test_arbitrary_fragments_stay_within_bounds(self, pieces):
        """Whatever arrives, the bounds hold and only typed errors come out."""
        clock = Clock()
        joiner = Reassembler(max_partial=2, max_bytes=16, remember=3, clock=clock, timeout=5, evict_oldest=False)
        for message, index, count, chunk in pieces:
            clock.advance(1)
            try:
                whole = joiner.add(Fragment(ids(4)[message], min(index, count - 1), count, chunk))
            except (MalformedFragment, ReassemblyFull):
                continue
            self.assertTrue(whole is None or len(whole) <= 16)
            self.assertLessEqual(joiner.partial_count, 2)

    def test_state_keeps_the_bounds_given(self):
        """A saved state comes back under the bounds its restorer gives."""
        joiner = Reassembler()
        for message_id in ids(3):
            joiner.add(split_message(message_id, b"ab", 1)[0])
        self.assertRaises(MalformedFragment, Reassembler.from_state, joiner.state(), max_partial=2,
                          evict_oldest=False)
        self.assertEqual(Reassembler.from_state(joiner.state(), max_partial=2).partial_count, 2)
