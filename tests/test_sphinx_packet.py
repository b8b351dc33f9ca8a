"""
Tests of building and processing Sphinx packets and SURBs in nymprov.sphinx:
round trips over every route length and packet size, and the build errors.
"""

import random

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from nymprov.sphinx import (
    DEFAULT_PAYLOAD_SIZE,
    SURB,
    Destination,
    FinalHop,
    ForwardHop,
    InvalidPayload,
    InvalidRouting,
    InvalidSURB,
    KeyPair,
    Node,
    PacketSize,
    build_packet,
    encode_address,
    poisson_delays,
    process_packet,
    public_key_from_base58,
    recover_plaintext,
)
from nymprov.sphinx.params import MAX_DELAY_NS

# Keys are slow to make only in bulk; five fixed nodes serve every example.
KEYPAIRS = [KeyPair.from_private_bytes(bytes([i + 1]) * 32) for i in range(5)]
NODES = [Node(encode_address("10.0.0.%d" % (i + 1), 1789), kp.public_bytes) for i, kp in enumerate(KEYPAIRS)]
DESTINATION = Destination(encode_address("::1", 9000), bytes(range(16)))
DELAY = st.integers(0, MAX_DELAY_NS)


@st.composite
def messages(draw, payload_size):
    """Messages from empty to the largest that fits, often ending in 0x01."""
    limit = payload_size - 17
    size = draw(st.one_of(st.just(limit), st.just(0), st.integers(0, limit)))
    body = draw(st.binary(min_size=size, max_size=size))
    if body and draw(st.booleans()):
        ones = draw(st.integers(1, len(body)))
        body = body[: len(body) - ones] + b"\x01" * ones
    return body


@st.composite
def journeys(draw):
    """A route length, packet size, delays and a message that fits."""
    hops = draw(st.integers(1, 5))
    size = draw(st.sampled_from(list(PacketSize)))
    delays = draw(st.lists(DELAY, min_size=hops, max_size=hops))
    return hops, size, delays, draw(messages(size.payload_size))


def walk(packet, hops):
    """Process ``packet`` through the first ``hops`` nodes; return the results."""
    results = []
    for keypair in KEYPAIRS[:hops]:
        result = process_packet(packet, keypair)
        results.append(result)
        packet = getattr(result, "packet", None)
    return results


class RoundTripTests(SynchronousTestCase):
    """A packet built for a route is unwrapped by that route."""

    @settings(max_examples=60)
    @given(journeys())
    def test_round_trip(self, journey):
        """
        Every hop forwards to the next node with its delay and keeps the
        packet's size; the last hop delivers the message to the destination.
        """
        hops, size, delays, message = journey
        packet = build_packet(message, NODES[:hops], delays, DESTINATION, size.payload_size)
        self.assertEqual(len(packet), size.packet_size)
        results = walk(packet, hops)
        for i, result in enumerate(results[:-1]):
            self.assertIsInstance(result, ForwardHop)
            self.assertEqual(result.next_address, NODES[i + 1].address)
            self.assertEqual(result.delay_ns, delays[i])
            self.assertEqual(len(result.packet), size.packet_size)
        final = results[-1]
        self.assertIsInstance(final, FinalHop)
        self.assertEqual(final.destination, DESTINATION.address)
        self.assertEqual(final.surb_id, DESTINATION.surb_id)
        self.assertEqual(len(final.payload), size.payload_size)
        self.assertEqual(final.message(), message)
        self.assertEqual(recover_plaintext(final.payload), message)

    def test_replay_tags(self):
        """
        Processing the same packet twice gives the same replay tag; another
        packet, or another hop, gives a different one.
        """
        packet = build_packet(b"hi", NODES[:2], [0, 0], DESTINATION)
        first = process_packet(packet, KEYPAIRS[0])
        self.assertEqual(process_packet(packet, KEYPAIRS[0]).replay_tag, first.replay_tag)
        self.assertEqual(len(first.replay_tag), 16)
        other = process_packet(build_packet(b"hi", NODES[:2], [0, 0], DESTINATION), KEYPAIRS[0])
        self.assertNotEqual(other.replay_tag, first.replay_tag)
        second = process_packet(first.packet, KEYPAIRS[1])
        self.assertNotEqual(second.replay_tag, first.replay_tag)

    def test_default_size(self):
        """The default payload is Nym's regular packet: 2065 bytes, 2413 in all."""
        self.assertEqual(DEFAULT_PAYLOAD_SIZE, 2065)
        self.assertEqual(len(build_packet(b"", NODES[:1], [0], DESTINATION)), 2413)

    def test_reproducible(self):
        """The same initial secret and padding give the same bytes."""
        args = (b"m", NODES[:3], [1, 2, 3], DESTINATION)
        kwargs = dict(initial_secret=bytes(32), final_padding=bytes(128))
        self.assertEqual(build_packet(*args, **kwargs), build_packet(*args, **kwargs))
        self.assertNotEqual(build_packet(*args), build_packet(*args))


class BuildErrorTests(SynchronousTestCase):
    """Bad arguments to build_packet."""

    def test_route_length(self):
        """An empty route or one of six nodes is a ValueError."""
        self.assertRaises(ValueError, build_packet, b"", [], [], DESTINATION)
        self.assertRaises(ValueError, build_packet, b"", NODES + NODES[:1], [0] * 6, DESTINATION)

    def test_delays(self):
        """A delay count unlike the hop count, or a delay beyond u64, is a ValueError."""
        self.assertRaises(ValueError, build_packet, b"", NODES[:2], [0], DESTINATION)
        self.assertRaises(ValueError, build_packet, b"", NODES[:1], [MAX_DELAY_NS + 1], DESTINATION)
        self.assertRaises(ValueError, build_packet, b"", NODES[:1], [-1], DESTINATION)

    def test_message_too_long(self):
        """A message one byte over the limit is InvalidPayload."""
        for size in PacketSize:
            self.assertRaises(
                InvalidPayload, build_packet, bytes(size.plaintext + 1), NODES[:1], [0], DESTINATION, size.payload_size
            )

    def test_small_payload_sizes(self):
        """Payload sizes below 17, below 32, and exactly 32 are InvalidPayload."""
        for payload_size in (0, 16, 17, 31, 32):
            self.assertRaises(InvalidPayload, build_packet, b"", NODES[:1], [0], DESTINATION, payload_size)
        self.assertEqual(len(build_packet(b"", NODES[:1], [0], DESTINATION, 33)), 348 + 33)

    def test_padding_and_secret_lengths(self):
        """A final padding or initial secret of the wrong length is a ValueError."""
        self.assertRaises(ValueError, build_packet, b"", NODES[:1], [0], DESTINATION, final_padding=bytes(10))
        self.assertRaises(ValueError, build_packet, b"", NODES[:1], [0], DESTINATION, initial_secret=bytes(31))

    def test_low_order_node_key(self):
        """A node whose public key is a low-order point is InvalidRouting."""
        for hop in (0, 1):
            route = list(NODES[:2])
            route[hop] = Node(route[hop].address, bytes(32))
            self.assertRaises(InvalidRouting, build_packet, b"", route, [0, 0], DESTINATION)

    def test_route_values(self):
        """Node and Destination refuse fields of the wrong length."""
        self.assertRaises(ValueError, Node, bytes(31), bytes(32))
        self.assertRaises(ValueError, Node, bytes(32), bytes(33))
        self.assertRaises(ValueError, Destination, bytes(32), bytes(15))


class SURBTests(SynchronousTestCase):
    """Reply blocks: create, serialise, use, receive."""

    @settings(max_examples=40)
    @given(journeys())
    def test_round_trip(self, journey):
        """
        A SURB survives serialisation, and a reply through it reaches its
        destination with the message intact.
        """
        hops, size, delays, message = journey
        surb = SURB.create(NODES[:hops], delays, DESTINATION)
        data = surb.to_bytes()
        self.assertEqual(len(data), 348 + 32 + 192 * hops)
        parsed = SURB.from_bytes(data)
        self.assertEqual(parsed, surb)
        first_hop, packet = parsed.use(message, size.payload_size)
        self.assertEqual(first_hop, NODES[0].address)
        self.assertEqual(len(packet), size.packet_size)
        final = walk(packet, hops)[-1]
        self.assertEqual((final.destination, final.surb_id), (DESTINATION.address, DESTINATION.surb_id))
        self.assertEqual(final.message(), message)

    def test_create_errors(self):
        """An empty route or mismatched delays are InvalidSURB."""
        self.assertRaises(InvalidSURB, SURB.create, [], [], DESTINATION)
        self.assertRaises(InvalidSURB, SURB.create, NODES[:2], [0], DESTINATION)

    def test_parse_errors(self):
        """Too few bytes, or a length that is not whole keys, are InvalidSURB."""
        data = SURB.create(NODES[:1], [0], DESTINATION).to_bytes()
        self.assertRaises(InvalidSURB, SURB.from_bytes, data[:-1])
        self.assertRaises(InvalidSURB, SURB.from_bytes, data + b"\0")
        self.assertRaises(InvalidSURB, SURB.from_bytes, b"")

    def test_use_too_long(self):
        """A reply too long for the payload size is InvalidPayload."""
        surb = SURB.create(NODES[:1], [0], DESTINATION)
        self.assertRaises(InvalidPayload, surb.use, bytes(2049))

    def test_repr_hides_keys(self):
        """The repr shows no key bytes."""
        surb = SURB.create(NODES[:1], [0], DESTINATION)
        self.assertNotIn(surb.payload_keys[0].hex()[:16], repr(surb))


class KeyPairTests(SynchronousTestCase):
    """Node key pairs."""

    def test_clamps(self):
        """from_private_bytes clamps, and the public key is X25519's."""
        keypair = KeyPair.from_private_bytes(b"\xff" * 32)
        self.assertEqual(keypair.private_bytes[0] & 7, 0)
        self.assertEqual(keypair.private_bytes[31] & 0xC0, 0x40)
        self.assertEqual(KeyPair.from_private_bytes(keypair.private_bytes).public_bytes, keypair.public_bytes)

    def test_base58(self):
        """The base58 public key decodes back to the key bytes."""
        keypair = KeyPair.generate()
        self.assertEqual(public_key_from_base58(keypair.public_base58), keypair.public_bytes)
        self.assertNotIn(keypair.private_bytes.hex(), repr(keypair))

    def test_bad_base58(self):
        """Bad characters or the wrong length are InvalidRouting."""
        for text in ("0OIl", "", "é", "1" * 10):
            self.assertRaises(InvalidRouting, public_key_from_base58, text)

    def test_wrong_private_length(self):
        """A private key that is not 32 bytes is a ValueError."""
        self.assertRaises(ValueError, KeyPair.from_private_bytes, bytes(31))


class DelayTests(SynchronousTestCase):
    """Poisson mixing delays."""

    def test_mean(self):
        """10,000 samples average near the mean, as integers in range."""
        delays = poisson_delays(50_000_000, 10_000, random.Random(1))
        self.assertEqual(len(delays), 10_000)
        self.assertTrue(all(isinstance(d, int) and 0 <= d <= MAX_DELAY_NS for d in delays))
        self.assertLess(abs(sum(delays) / len(delays) / 50_000_000 - 1.0), 0.05)

    def test_zero_mean(self):
        """A zero mean gives zero delays; a negative mean is refused."""
        self.assertEqual(poisson_delays(0, 3), [0, 0, 0])
        self.assertRaises(ValueError, poisson_delays, -1, 3)

    def test_default_rng(self):
        """Without an rng the delays come from the system RNG and vary."""
        self.assertNotEqual(poisson_delays(10**9, 8), poisson_delays(10**9, 8))
