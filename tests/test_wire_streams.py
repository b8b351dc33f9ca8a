"""Stream frames (nymprov.wire.streams): round trips and refusals of bad bytes."""

from hypothesis import given, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from nymprov.wire.streams import (
    ACK,
    DATA,
    MAX_SACK_LENGTH,
    KINDS,
    OPEN,
    RESET,
    STREAM_HEADER_LENGTH,
    MalformedStreamFrame,
    StreamFrame,
    decode_open,
    decode_reset,
    decode_sack,
    encode_open,
    encode_reset,
    encode_sack,
)

u32 = st.integers(0, 0xFFFFFFFF)
u16 = st.integers(0, 0xFFFF)
frames = st.builds(
    StreamFrame, st.sampled_from(sorted(KINDS)), st.binary(min_size=16, max_size=16), u32, u32, u32, u16, u16,
    st.just(b""))
hosts = st.text("abcdefghijklmnopqrstuvwxyz0123456789-.", min_size=1, max_size=255)


class FrameTests(SynchronousTestCase):
    @given(frames, st.binary(max_size=3000))
    def test_round_trip(self, frame, payload):
        """Every field survives encoding; payload only where the kind has one."""
        if frame.kind in (OPEN, DATA, RESET) or frame.kind == ACK and len(payload) <= MAX_SACK_LENGTH:
            frame = StreamFrame(frame.kind, frame.session, frame.stream, frame.seq, frame.ack, frame.window,
                                frame.surbs, payload)
        data = frame.to_bytes()
        self.assertEqual(StreamFrame.from_bytes(data), frame)
        self.assertEqual(len(data), STREAM_HEADER_LENGTH + len(frame.payload))

    @given(st.binary(max_size=200))
    def test_arbitrary_bytes_decode_or_raise_typed(self, data):
        """Any bytes either decode to a frame that encodes back to them, or raise MalformedStreamFrame."""
        try:
            frame = StreamFrame.from_bytes(data)
        except MalformedStreamFrame:
            return
        self.assertEqual(frame.to_bytes(), data)

    def test_refusals(self):
        """Short, wrong version, unknown kind, payload on an OPENED, an over-long selective ACK: each refused."""
        good = StreamFrame(DATA, bytes(16), 1, payload=b"x").to_bytes()
        for bad in (good[:STREAM_HEADER_LENGTH - 1], b"\x02" + good[1:], good[:1] + b"\x63" + good[2:],
                    StreamFrame(2, bytes(16), 1).to_bytes() + b"x",
                    StreamFrame(ACK, bytes(16), 1).to_bytes() + bytes(MAX_SACK_LENGTH + 1)):
            self.assertRaises(MalformedStreamFrame, StreamFrame.from_bytes, bad)

    @given(u32, st.sets(st.integers(0, 2000)))
    def test_sack_round_trip(self, ack, held_offsets):
        """The held frames within the bitmap's reach come back; none beyond it, none invented."""
        ack = min(ack, 0xFFFFFFFF - 3000)
        held = {ack + 1 + offset for offset in held_offsets}
        payload = encode_sack(ack, held)
        self.assertLessEqual(len(payload), MAX_SACK_LENGTH)
        self.assertEqual(set(decode_sack(ack, payload)), {s for s in held if s - ack - 1 < 8 * MAX_SACK_LENGTH})
        self.assertEqual(StreamFrame.from_bytes(StreamFrame(ACK, bytes(16), 1, 0, ack, 1, 0, payload).to_bytes()).payload,
                         payload)

    @given(hosts, st.integers(1, 0xFFFF))
    def test_open_round_trip(self, host, port):
        self.assertEqual(decode_open(encode_open(host, port)), (host, port))

    @given(st.binary(max_size=300))
    def test_open_arbitrary_bytes(self, data):
        """An OPEN payload decodes to a plain host and a port, or is refused with a typed error."""
        try:
            host, port = decode_open(data)
        except MalformedStreamFrame:
            return
        self.assertTrue(0 < port and host.isascii() and " " not in host)

    def test_reset_codes(self):
        """A RESET carries a SOCKS5 code; nonsense reads as general failure (1)."""
        for code in range(1, 9):
            self.assertEqual(decode_reset(encode_reset(code)), code)
        for bad in (b"", b"\x00", b"\x09", b"\x01\x02"):
            self.assertEqual(decode_reset(bad), 1)
