"""
Tests for nymprov.wire.frames, the mix-link frame codec.
"""

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from nymprov.sphinx.params import PacketSize
from nymprov.wire.frames import (
    FRAME_VERSION,
    KEY_ROTATION_FRAME_VERSION,
    Frame,
    FrameDecoder,
    FrameError,
    UnknownKeyRotation,
    UnknownPacketType,
    UnknownSizeTag,
    UnknownVersion,
    encode_frame,
    rotation_of_epoch,
)


def packet_sizes():
    """
    Build one of the five ``PacketSize`` values.
    """
    return st.sampled_from(list(PacketSize))


def packets(size):
    """
    Build a packet of exactly ``size``'s length; cheap filler with random
    edges so that a misplaced boundary shows up.
    """
    n = size.packet_size
    return st.tuples(st.binary(min_size=8, max_size=8), st.binary(min_size=8, max_size=8)).map(
        lambda edges: edges[0] + bytes(n - 16) + edges[1]
    )


def frames():
    """
    Build a ``Frame`` of any size.
    """
    return packet_sizes().flatmap(lambda s: packets(s).map(lambda p: Frame(s, p)))


def chunkings(data):
    """
    Split ``data`` at arbitrary points, as TCP may.
    """
    cuts = st.lists(st.integers(0, len(data)), max_size=12).map(sorted)
    return cuts.map(lambda c: [data[i:j] for i, j in zip([0] + c, c + [len(data)])])


def legacy_frame(frame):
    """
    Encode ``frame`` with the old two-byte header.
    """
    return bytes((frame.size.tag, 0)) + frame.packet


class EncodeTests(SynchronousTestCase):
    """
    encode_frame writes the versioned header.
    """

    def test_header(self):
        """
        Each size is framed as version 7, its tag, packet type 0.
        """
        for size in PacketSize:
            packet = bytes(size.packet_size)
            self.assertEqual(
                encode_frame(packet)[:3], bytes((FRAME_VERSION, size.tag, 0))
            )
            self.assertEqual(encode_frame(packet)[3:], packet)

    def test_regular_tag(self):
        """
        A 2413-byte packet gets tag 1, as in Nym.
        """
        self.assertEqual(encode_frame(bytes(2413))[1], 1)

    def test_not_a_packet_size(self):
        """
        A length that is no packet size is a programming error: ValueError.
        """
        for length in (0, 1, 2412, 2414, 33134):
            self.assertRaises(ValueError, encode_frame, bytes(length))


class RoundTripTests(SynchronousTestCase):
    """
    Whatever encode_frame writes, FrameDecoder reads back.
    """

    @settings(max_examples=60)
    @given(frames())
    def test_round_trip(self, frame):
        """
        One encoded frame decodes to an equal frame, in one feed.
        """
        decoder = FrameDecoder()
        self.assertEqual(decoder.feed(encode_frame(frame.packet)), [frame])
        self.assertEqual(decoder.buffered, 0)

    @settings(max_examples=60)
    @given(st.lists(frames(), min_size=1, max_size=6), st.data())
    def test_arbitrary_splits(self, sent, data):
        """
        A stream of frames, split anywhere, decodes to the same frames in
        order, with nothing left over.
        """
        wire = b"".join(encode_frame(f.packet) for f in sent)
        decoder = FrameDecoder()
        received = []
        for chunk in data.draw(chunkings(wire)):
            received.extend(decoder.feed(chunk))
        self.assertEqual(received, sent)
        self.assertEqual(decoder.buffered, 0)

    @settings(max_examples=40)
    @given(st.lists(frames(), min_size=1, max_size=6), st.lists(st.booleans(), min_size=6, max_size=6), st.data())
    def test_legacy_and_versioned_mixed(self, sent, legacy, data):
        """
        Legacy two-byte and versioned headers may be mixed on one stream.
        """
        wire = b"".join(
            legacy_frame(f) if old else encode_frame(f.packet)
            for f, old in zip(sent, legacy)
        )
        decoder = FrameDecoder()
        received = []
        for chunk in data.draw(chunkings(wire)):
            received.extend(decoder.feed(chunk))
        self.assertEqual(received, sent)

    def test_byte_at_a_time(self):
        """
        Feeding one byte at a time yields the frame on its last byte only.
        """
        packet = bytes(range(256)) + bytes(PacketSize.ACK.packet_size - 256)
        wire = encode_frame(packet)
        decoder = FrameDecoder()
        for b in wire[:-1]:
            self.assertEqual(decoder.feed(bytes((b,))), [])
        self.assertEqual(decoder.feed(wire[-1:]), [Frame(PacketSize.ACK, packet)])

    def test_partial_kept(self):
        """
        A frame and a half decode to one frame; the half is kept buffered.
        """
        packet = bytes(PacketSize.REGULAR.packet_size)
        wire = encode_frame(packet) * 2
        decoder = FrameDecoder()
        cut = len(wire) - 100
        self.assertEqual(len(decoder.feed(wire[:cut])), 1)
        self.assertEqual(decoder.buffered, len(wire) // 2 - 100)
        self.assertEqual(len(decoder.feed(wire[cut:])), 1)
        self.assertEqual(decoder.buffered, 0)


class RefusalTests(SynchronousTestCase):
    """
    Bad headers raise typed errors at once, and the decoder stays refused.
    """

    def assert_refused(self, data, error, reason):
        decoder = FrameDecoder()
        e = self.assertRaises(error, decoder.feed, data)
        self.assertEqual(e.reason, reason)
        # Poisoned: the stream cannot be resynchronised.
        self.assertRaises(error, decoder.feed, encode_frame(bytes(2413)))
        return e

    def test_future_version(self):
        """
        A version byte above 8 is UnknownVersion, from its first byte.
        """
        for version in (9, 200, 255):
            e = self.assert_refused(bytes((version,)), UnknownVersion, "unknown_version")
            self.assertEqual(e.value, version)

    def test_unknown_tags_versioned(self):
        """
        Any tag but 1..5 in a versioned header is UnknownSizeTag, before the
        packet type byte arrives.
        """
        for tag in (0, 6, 7, 100, 255):
            e = self.assert_refused(bytes((7, tag)), UnknownSizeTag, "unknown_size_tag")
            self.assertEqual(e.value, tag)

    def test_unknown_tags_legacy(self):
        """
        A first byte of 0 or 6 is a legacy header with an unknown tag.
        """
        for tag in (0, 6):
            self.assert_refused(bytes((tag,)), UnknownSizeTag, "unknown_size_tag")

    def test_refused_types(self):
        """
        Packet types 1 (vpn), 2 (Outfox) and others are UnknownPacketType,
        in both header forms, before any packet byte arrives.
        """
        for packet_type in (1, 2, 3, 255):
            e = self.assert_refused(
                bytes((7, 1, packet_type)), UnknownPacketType, "unknown_packet_type"
            )
            self.assertEqual(e.value, packet_type)
            self.assert_refused(
                bytes((1, packet_type)), UnknownPacketType, "unknown_packet_type"
            )

    def test_outfox_named(self):
        """
        The message names the refused Outfox type.
        """
        e = self.assertRaises(UnknownPacketType, FrameDecoder().feed, bytes((7, 1, 2)))
        self.assertIn("outfox", str(e))

    def test_bad_header_after_good_frames(self):
        """
        A bad header after a good frame raises; the decoder drops its buffer.
        """
        decoder = FrameDecoder()
        self.assertEqual(len(decoder.feed(encode_frame(bytes(386)))), 1)
        self.assertRaises(UnknownVersion, decoder.feed, bytes((9, 1, 0)))
        self.assertEqual(decoder.buffered, 0)

    def test_frames_before_a_bad_header_in_one_feed(self):
        """
        Whole frames that come in the same feed as a bad header are handed
        over with the error, once.
        """
        decoder = FrameDecoder()
        good = [encode_frame(bytes([i]) * 386) for i in range(2)]
        e = self.assertRaises(UnknownVersion, decoder.feed, b"".join(good) + bytes((9, 1, 0)))
        self.assertEqual([frame.packet for frame in e.frames_before], [bytes([0]) * 386, bytes([1]) * 386])
        e = self.assertRaises(UnknownVersion, decoder.feed, b"more")
        self.assertEqual(e.frames_before, ())

    def test_all_frame_errors(self):
        """
        Each refusal is a FrameError.
        """
        for error in (UnknownVersion, UnknownSizeTag, UnknownPacketType, UnknownKeyRotation):
            self.assertTrue(issubclass(error, FrameError))

    @settings(max_examples=200)
    @given(st.binary(max_size=3000), st.data())
    def test_garbage(self, garbage, data):
        """
        Arbitrary bytes, split anywhere, either decode to frames of valid
        sizes or raise FrameError; nothing else.
        """
        decoder = FrameDecoder()
        try:
            for chunk in data.draw(chunkings(garbage)):
                for frame in decoder.feed(chunk):
                    self.assertEqual(len(frame.packet), frame.size.packet_size)
        except FrameError as e:
            self.assertIn(
                e.reason, ("unknown_version", "unknown_size_tag", "unknown_packet_type", "unknown_key_rotation")
            )

    @settings(max_examples=100)
    @given(st.integers(0, 255), st.integers(0, 255), st.integers(0, 255))
    def test_header_verdicts(self, first, second, third):
        """
        Every three-byte header is judged as the spec says.
        """
        data = bytes((first, second, third)) + bytes(33133)
        decoder = FrameDecoder()
        tags = {s.tag for s in PacketSize}
        if first > 8:
            self.assertRaises(UnknownVersion, decoder.feed, data)
        elif first == 8:
            # The fourth byte (here 0: rotation unknown) decides nothing more.
            if second not in tags:
                self.assertRaises(UnknownSizeTag, decoder.feed, data)
            elif third != 0:
                self.assertRaises(UnknownPacketType, decoder.feed, data)
            else:
                self.assertEqual(decoder.feed(data)[0].key_rotation, 0)
        elif first < 7:
            if first not in tags:
                self.assertRaises(UnknownSizeTag, decoder.feed, data)
            elif second != 0:
                self.assertRaises(UnknownPacketType, decoder.feed, data)
            else:
                self.assertEqual(decoder.feed(data)[0].size.tag, first)
        elif second not in tags:
            self.assertRaises(UnknownSizeTag, decoder.feed, data)
        elif third != 0:
            self.assertRaises(UnknownPacketType, decoder.feed, data)
        else:
            self.assertEqual(decoder.feed(data)[0].size.tag, second)


class KeyRotationFrameTests(SynchronousTestCase):
    """
    Version 8 frames, as Nym's key-rotation release sends them: a fourth
    header byte names the key the packet was built for.
    """

    @given(frames(), st.sampled_from([1, 2]), st.data())
    def test_round_trip_with_rotation(self, frame, rotation, data):
        """A frame with a rotation decodes to the same packet and rotation, split anywhere."""
        encoded = encode_frame(frame.packet, rotation)
        self.assertEqual(encoded[:4], bytes((KEY_ROTATION_FRAME_VERSION, frame.size.tag, 0, rotation)))
        decoder = FrameDecoder()
        decoded = []
        for chunk in data.draw(chunkings(encoded + encode_frame(frame.packet))):
            decoded += decoder.feed(chunk)
        self.assertEqual(decoded, [Frame(frame.size, frame.packet, rotation), Frame(frame.size, frame.packet, 0)])

    def test_unknown_rotation_refused(self):
        """A rotation byte above 2 is refused before the packet arrives, and poisons the stream."""
        for rotation in (3, 7, 255):
            decoder = FrameDecoder()
            e = self.assertRaises(UnknownKeyRotation, decoder.feed, bytes((8, 1, 0, rotation)))
            self.assertEqual((e.reason, e.value), ("unknown_key_rotation", rotation))
            self.assertRaises(UnknownKeyRotation, decoder.feed, encode_frame(bytes(386)))

    def test_without_rotation_sends_todays_frame(self):
        """Rotation 0 (unknown) is sent as the version 7 frame every peer reads."""
        self.assertEqual(encode_frame(bytes(386), 0)[:3], bytes((FRAME_VERSION, 2, 0)))
        self.assertRaises(ValueError, encode_frame, bytes(386), 3)

    def test_rotation_of_epoch(self):
        """Odd epochs' keys are rotation 1, even epochs' rotation 2 (Nym's values)."""
        self.assertEqual([rotation_of_epoch(e) for e in (0, 1, 2, 7)], [2, 1, 2, 1])


class PacketLengthTests(SynchronousTestCase):
    """One table of packet lengths answers every "is this a packet?" question."""

    @settings(max_examples=200)
    @given(st.integers(0, 40_000))
    def test_lengths_agree_with_the_sizes(self, length):
        """A length is a packet length exactly when some size has it, and frames take it."""
        sizes = [size for size in PacketSize if size.packet_size == length]
        self.assertEqual(PacketSize.is_packet_length(length), bool(sizes))
        if sizes:
            self.assertEqual(PacketSize.from_packet_length(length), sizes[0])
        else:
            self.assertRaises(ValueError, PacketSize.from_packet_length, length)
