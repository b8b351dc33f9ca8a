"""
Robustness of nymprov.sphinx: arbitrary bytes give a result or a typed
SphinxError, never another exception, and no header bit can be flipped.
"""

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from nymprov.sphinx import (
    SURB,
    Destination,
    FinalHop,
    ForwardHop,
    KeyPair,
    Node,
    PacketSize,
    SphinxError,
    build_packet,
    decode_address,
    encode_address,
    process_packet,
    recover_plaintext,
)

KEYPAIRS = [KeyPair.from_private_bytes(bytes([0x40 + i]) * 32) for i in range(3)]
NODES = [Node(encode_address("192.0.2.%d" % (i + 1), 1789), kp.public_bytes) for i, kp in enumerate(KEYPAIRS)]
DESTINATION = Destination(encode_address("192.0.2.99", 9000), b"S" * 16)
FORWARD_PACKET = build_packet(b"robust", NODES, [1, 2, 3], DESTINATION)
FINAL_PACKET = build_packet(b"robust", NODES[2:], [3], DESTINATION)

PACKET_LENGTHS = sorted({n for size in PacketSize for n in range(size.packet_size - 2, size.packet_size + 3)})
PARSERS = [
    lambda b: process_packet(b, KEYPAIRS[0]),
    SURB.from_bytes,
    decode_address,
    recover_plaintext,
]


def garbage():
    """Byte strings of every length up to 3,000 and around each packet size."""
    return st.one_of(
        st.binary(max_size=3000),
        st.sampled_from(PACKET_LENGTHS).flatmap(lambda n: st.binary(min_size=n, max_size=n)),
        # Valid packets with a tail cut off or junk appended.
        st.tuples(st.sampled_from([FORWARD_PACKET, FINAL_PACKET]), st.integers(0, 2413), st.binary(max_size=40)).map(
            lambda t: t[0][: t[1]] + t[2]
        ),
    )


def flip(data: bytes, bit: int) -> bytes:
    index, shift = divmod(bit, 8)
    return data[:index] + bytes((data[index] ^ (1 << shift),)) + data[index + 1 :]


class GarbageTests(SynchronousTestCase):
    """Arbitrary input to every parser."""

    @settings(max_examples=150)
    @given(garbage())
    def test_only_typed_errors(self, data):
        """
        Every parser either returns or raises a SphinxError subclass.
        """
        for parse in PARSERS:
            try:
                parse(data)
            except SphinxError as e:
                self.assertIsInstance(e.reason, str)

    def test_every_short_length(self):
        """
        process_packet refuses every length below 365 as too short, and the
        other parsers give only typed errors, for lengths 0..400.
        """
        for n in range(0, 401):
            data = bytes((n * 7 + i) & 0xFF for i in range(n))
            for parse in PARSERS:
                try:
                    parse(data)
                except SphinxError:
                    pass


class BitFlipTests(SynchronousTestCase):
    """Single-bit damage to a valid packet."""

    def assertEveryHeaderFlipRefused(self, packet, keypair):
        for bit in range(348 * 8):
            damaged = flip(packet, bit)
            try:
                result = process_packet(damaged, keypair)
            except SphinxError:
                continue
            self.fail(f"header bit {bit} flipped, yet the packet gave {type(result).__name__}")

    def test_forward_header_bits(self):
        """Flipping any one of the 2,784 header bits of a forward hop is refused."""
        self.assertEveryHeaderFlipRefused(FORWARD_PACKET, KEYPAIRS[0])

    def test_final_header_bits(self):
        """Flipping any one of the 2,784 header bits of a final hop is refused."""
        self.assertEveryHeaderFlipRefused(FINAL_PACKET, KEYPAIRS[2])

    @settings(max_examples=50)
    @given(st.integers(348 * 8, len(FORWARD_PACKET) * 8 - 1))
    def test_payload_bits(self, bit):
        """
        The header does not cover the payload (as in the crate): a flipped
        payload bit still gives a valid forward hop to the same next node,
        but the final payload is garbled beyond recovery of the message.
        """
        packet = flip(FORWARD_PACKET, bit)
        results = []
        for keypair in KEYPAIRS:
            result = process_packet(packet, keypair)
            results.append(result)
            packet = getattr(result, "packet", None)
        self.assertIsInstance(results[0], ForwardHop)
        self.assertEqual(results[0].next_address, NODES[1].address)
        final = results[-1]
        self.assertIsInstance(final, FinalHop)
        self.assertEqual(final.destination, DESTINATION.address)
        try:
            message = final.message()
        except SphinxError:
            return
        self.assertNotEqual(message, b"robust")

    def test_state_untouched(self):
        """A refused packet leaves the key pair usable and unchanged."""
        before = (KEYPAIRS[0].private_bytes, KEYPAIRS[0].public_bytes)
        self.assertRaises(SphinxError, process_packet, flip(FORWARD_PACKET, 300), KEYPAIRS[0])
        self.assertEqual((KEYPAIRS[0].private_bytes, KEYPAIRS[0].public_bytes), before)
        self.assertIsInstance(process_packet(FORWARD_PACKET, KEYPAIRS[0]), ForwardHop)
