"""Tests for nymprov.backends.surbreply: service-message codecs and SURB replies."""

from hypothesis import given, settings, strategies as st
from nacl.public import PrivateKey
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from nymprov.backends.echo import EchoProvider
from nymprov.backends.surbreply import (
    REPLY_CHUNK_SIZE,
    MalformedRequest,
    Reassembler,
    ServiceBusy,
    SurbRefused,
    decode_fragment,
    decode_request,
    encode_fragment,
    encode_request,
    open_reply,
    split_fragments,
)
from nymprov.interfaces import IMixSender, IProvider
from nymprov.sphinx import SURB, Destination, KeyPair, Node, encode_address, process_packet
from nymprov.topology import StaticTopology
from nymprov.wire.envelope import FinalMessage, decode_envelope

MIXES = [KeyPair.generate() for _ in range(2)]
ROUTE = [Node(encode_address("127.0.0.1", 2000 + i), kp.public_bytes) for i, kp in enumerate(MIXES)]
TOPOLOGY = StaticTopology(first_layer=[ROUTE[0].address])
HOME = Destination(b"\x07" * 32, b"\x01" * 16)


def make_surb():
    """A SURB through ROUTE back to HOME."""
    return SURB.create(ROUTE, [0, 0], HOME)


def final(body):
    """What the node hands a backend for a message to HOME with ``body``."""
    return FinalMessage(HOME.address, HOME.surb_id, body)


def walk(packet):
    """Process ``packet`` through ROUTE; returns the final message."""
    for keypair in MIXES:
        hop = process_packet(packet, keypair)
        packet = getattr(hop, "packet", None)
    return hop.message()


@implementer(IMixSender)
class RecordingSender:
    """Keeps what it is asked to send; refuses when ``full``."""

    def __init__(self, full=False):
        self.sent = []
        self.full = full

    def send(self, address, packet, key_rotation=0):
        if self.full:
            return False
        self.sent.append((address, packet))
        return True


class FragmentTests(SynchronousTestCase):
    """Fragments round-trip; garbage raises MalformedRequest only."""

    @settings(max_examples=100)
    @given(st.binary(min_size=16, max_size=16), st.binary(max_size=5000), st.integers(20, 3000))
    def test_split_and_join(self, request_id, data, chunk):
        """Splitting then reassembling in reverse order gives the data back."""
        fragments = split_fragments(request_id, data, chunk)
        joiner = Reassembler(Clock(), max_bytes=10_000)
        results = [joiner.add(f) for f in reversed(fragments)]
        self.assertEqual(results[-1], (request_id, data))
        self.assertEqual(results[:-1], [None] * (len(fragments) - 1))
        self.assertEqual(joiner.pending_count, 0)

    @settings(max_examples=200)
    @given(st.binary(max_size=64))
    def test_garbage(self, data):
        """Arbitrary bytes decode as a fragment or raise MalformedRequest."""
        try:
            request_id, index, count, _ = decode_fragment(data)
        except MalformedRequest:
            return
        self.assertLess(index, count)

    def test_bounds(self):
        """A reassembler refuses new requests when full and oversize ones, keeping nothing."""
        clock = Clock()
        joiner = Reassembler(clock, max_pending=1, max_bytes=10, timeout=5)
        self.assertIsNone(joiner.add(encode_fragment(b"a" * 16, 0, 2, b"12345")))
        self.assertRaises(ServiceBusy, joiner.add, encode_fragment(b"b" * 16, 0, 2, b"x"))
        self.assertRaises(ServiceBusy, joiner.add, encode_fragment(b"a" * 16, 1, 2, b"123456"))
        self.assertRaises(MalformedRequest, joiner.add, encode_fragment(b"a" * 16, 0, 2, b"x"))
        self.assertRaises(MalformedRequest, joiner.add, encode_fragment(b"a" * 16, 1, 3, b"x"))
        clock.advance(6)
        self.assertIsNone(joiner.add(encode_fragment(b"b" * 16, 0, 2, b"x")))
        self.assertEqual(joiner.pending_count, 1)


class RequestTests(SynchronousTestCase):
    """Requests carry SURBs whose first hop must be a first-layer mix."""

    def test_round_trip(self):
        """A request's SURBs, reply key and body come back as encoded."""
        surbs = [make_surb(), make_surb()]
        data = encode_request(surbs, b"body", b"\x05" * 32)
        request = decode_request(b"r" * 16, data, TOPOLOGY)
        self.assertEqual(request.surbs, surbs)
        self.assertEqual((request.reply_key, request.body), (b"\x05" * 32, b"body"))
        self.assertEqual(request.reply_capacity, 2 * REPLY_CHUNK_SIZE - 48)

    def test_surb_elsewhere_refused(self):
        """A SURB whose first hop is not a first-layer mix is refused."""
        data = encode_request([SURB.create(ROUTE[1:], [0], HOME)], b"")
        self.assertRaises(SurbRefused, decode_request, b"r" * 16, data, TOPOLOGY)

    @settings(max_examples=100)
    @given(st.binary(max_size=600))
    def test_garbage(self, data):
        """Arbitrary bytes decode as a request or raise a DeliveryError subclass."""
        try:
            decode_request(b"r" * 16, data, TOPOLOGY)
        except (MalformedRequest, SurbRefused):
            pass


class EchoTests(SynchronousTestCase):
    """The echo backend answers through real SURBs."""

    def deliver_all(self, backend, request_id, data):
        return [self.successResultOf(backend.deliver(final(f)))
                for f in split_fragments(request_id, data, 500)]

    def test_echo_sealed_through_surbs(self):
        """A fragmented request is echoed, sealed to its reply key, one fragment per SURB."""
        sender = RecordingSender()
        backend = EchoProvider(sender, TOPOLOGY, Clock())
        self.assertTrue(IProvider.providedBy(backend))
        key = PrivateKey.generate()
        body = bytes(range(256)) * 12
        self.deliver_all(backend, b"q" * 16, encode_request([make_surb() for _ in range(3)], body,
                                                             bytes(key.public_key)))
        self.assertEqual([a for a, _ in sender.sent], [ROUTE[0].address] * 2)
        parts = {}
        for _, packet in sender.sent:
            request_id, index, count, data = decode_fragment(decode_envelope(walk(packet)).body)
            self.assertEqual((request_id, count), (b"q" * 16, 2))
            parts[index] = data
        self.assertEqual(open_reply(parts[0] + parts[1], key), body)

    def test_bad_surb_changes_nothing(self):
        """A request with a SURB elsewhere is refused and nothing is sent."""
        sender = RecordingSender()
        backend = EchoProvider(sender, TOPOLOGY, Clock())
        data = encode_request([SURB.create(ROUTE[1:], [0], HOME)], b"hi")
        d = backend.deliver(final(encode_fragment(b"z" * 16, 0, 1, data)))
        self.failureResultOf(d, SurbRefused)
        self.assertEqual(sender.sent, [])
