"""Tests for nymprov.backends.surbreply: service-message codecs and SURB replies."""

import os

from hypothesis import given, settings, strategies as st
from nacl.public import PrivateKey
from twisted.internet.defer import fail
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from nymprov.backends.echo import EchoProvider
from nymprov.backends.surbreply import (
    FRAGMENT_HEADER_SIZE,
    REPLY_CHUNK_SIZE,
    MalformedServiceRequest,
    ServiceBusy,
    SurbRefused,
    decode_fragment,
    decode_service_request,
    encode_fragment,
    encode_service_request,
    open_reply,
    service_reassembler,
    split_fragments,
)
from nymprov.interfaces import IMixSender, IProvider
from nymprov.sphinx import SURB, Destination, KeyPair, Node, encode_address, process_packet
from nymprov.topology import StaticTopology
from nymprov.wire.envelope import FinalMessage, decode_envelope
from nymprov.wire.fragments import Fragment, Reassembler

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
    """Service fragments round-trip; garbage raises MalformedServiceRequest only."""

    @settings(max_examples=100)
    @given(st.binary(min_size=16, max_size=16), st.binary(max_size=5000), st.integers(20, 3000))
    def test_split_and_join(self, request_id, data, chunk):
        """Splitting then reassembling in reverse order gives the data back."""
        fragments = split_fragments(request_id, data, chunk)
        joiner = service_reassembler(Clock())
        results = [joiner.add(decode_fragment(f)) for f in reversed(fragments)]
        self.assertEqual(results[-1], data)
        self.assertEqual(results[:-1], [None] * (len(fragments) - 1))
        self.assertEqual({decode_fragment(f).message_id for f in fragments}, {request_id})
        self.assertEqual(joiner.partial_count, 0)

    @settings(max_examples=200)
    @given(st.binary(max_size=64))
    def test_garbage(self, data):
        """Arbitrary bytes decode as a fragment or raise MalformedServiceRequest."""
        try:
            fragment = decode_fragment(data)
        except MalformedServiceRequest:
            return
        self.assertLess(fragment.index, fragment.count)
        self.assertLessEqual(fragment.count, 256)

    def test_layout(self):
        """A service fragment is the version byte, then a client fragment's bytes."""
        encoded = encode_fragment(b"i" * 16, 1, 3, b"data")
        self.assertEqual(encoded, b"\x01" + Fragment(b"i" * 16, 1, 3, b"data").to_bytes())
        self.assertEqual(len(encoded) - len(b"data"), FRAGMENT_HEADER_SIZE)

    def test_bounds(self):
        """A service refuses new requests when full and oversize ones as busy, keeping nothing."""
        clock = Clock()
        joiner = Reassembler(max_partial=1, max_bytes=10, clock=clock, timeout=5, evict_oldest=False)
        backend = EchoProvider(RecordingSender(), TOPOLOGY, clock, reassembler=joiner)

        def deliver(request_id, index, count, data):
            return backend.deliver(final(encode_fragment(request_id, index, count, data)))

        self.assertIsNone(self.successResultOf(deliver(b"a" * 16, 0, 2, b"12345")))
        self.failureResultOf(deliver(b"b" * 16, 0, 2, b"x"), ServiceBusy)
        self.failureResultOf(deliver(b"a" * 16, 1, 2, b"123456"), ServiceBusy)
        # A copy of a fragment already kept (its ACK was lost) is taken again.
        self.assertIsNone(self.successResultOf(deliver(b"a" * 16, 0, 2, b"x")))
        self.failureResultOf(deliver(b"a" * 16, 1, 3, b"x"), MalformedServiceRequest)
        clock.advance(6)
        self.assertIsNone(self.successResultOf(deliver(b"b" * 16, 0, 2, b"x")))
        self.assertEqual(joiner.partial_count, 1)


class RequestTests(SynchronousTestCase):
    """Requests carry SURBs whose first hop must be a first-layer mix."""

    def test_round_trip(self):
        """A request's SURBs, reply key and body come back as encoded."""
        surbs = [make_surb(), make_surb()]
        data = encode_service_request(surbs, b"body", b"\x05" * 32)
        request = decode_service_request(b"r" * 16, data, TOPOLOGY)
        self.assertEqual(request.surbs, surbs)
        self.assertEqual((request.reply_key, request.body), (b"\x05" * 32, b"body"))
        self.assertEqual(request.reply_capacity, 2 * REPLY_CHUNK_SIZE - 48)

    def test_surb_elsewhere_refused(self):
        """A SURB whose first hop is not a first-layer mix is refused."""
        data = encode_service_request([SURB.create(ROUTE[1:], [0], HOME)], b"")
        self.assertRaises(SurbRefused, decode_service_request, b"r" * 16, data, TOPOLOGY)

    @settings(max_examples=100)
    @given(st.binary(max_size=600))
    def test_garbage(self, data):
        """Arbitrary bytes decode as a request or raise a DeliveryError subclass."""
        try:
            decode_service_request(b"r" * 16, data, TOPOLOGY)
        except (MalformedServiceRequest, SurbRefused):
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
        self.deliver_all(backend, b"q" * 16, encode_service_request([make_surb() for _ in range(3)], body,
                                                             bytes(key.public_key)))
        self.assertEqual([a for a, _ in sender.sent], [ROUTE[0].address] * 2)
        parts = {}
        for _, packet in sender.sent:
            fragment = decode_fragment(decode_envelope(walk(packet)).body)
            request_id, index, count, data = fragment.message_id, fragment.index, fragment.count, fragment.chunk
            self.assertEqual((request_id, count), (b"q" * 16, 2))
            parts[index] = data
        self.assertEqual(open_reply(parts[0] + parts[1], key), body)

    def test_bad_surb_changes_nothing(self):
        """A request with a SURB elsewhere is refused and nothing is sent."""
        sender = RecordingSender()
        backend = EchoProvider(sender, TOPOLOGY, Clock())
        data = encode_service_request([SURB.create(ROUTE[1:], [0], HOME)], b"hi")
        d = backend.deliver(final(encode_fragment(b"z" * 16, 0, 1, data)))
        self.failureResultOf(d, SurbRefused)
        self.assertEqual(sender.sent, [])

    def test_low_order_reply_key_refused(self):
        """
        A reply key that is a low-order point (no shared secret can come
        of it) is refused as a typed DeliveryError before anything is
        sent, not a crypto library's RuntimeError per packet.
        """
        for low_order in (b"\x01" + bytes(31), bytes.fromhex(
                "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")):
            sender = RecordingSender()
            backend = EchoProvider(sender, TOPOLOGY, Clock())
            data = encode_service_request([make_surb()], b"hi", low_order)
            d = backend.deliver(final(encode_fragment(os.urandom(16), 0, 1, data)))
            self.failureResultOf(d, MalformedServiceRequest)
            self.assertEqual(sender.sent, [])

    def test_copy_of_a_taken_request_is_not_handled_again(self):
        """A retransmitted copy of a request already taken (its ACK was lost) is taken, not echoed twice."""
        sender = RecordingSender()
        backend = EchoProvider(sender, TOPOLOGY, Clock())
        message = final(encode_fragment(b"c" * 16, 0, 1, encode_service_request([make_surb()], b"once")))
        self.successResultOf(backend.deliver(message))
        self.successResultOf(backend.deliver(message))
        self.assertEqual(len(sender.sent), 1)

    def test_request_not_taken_may_come_again(self):
        """A request its backend refused is handled when its sender retransmits it."""
        sender = RecordingSender()
        backend = EchoProvider(sender, TOPOLOGY, Clock())
        refusals = [ServiceBusy("busy now")]
        handle = backend.handle
        backend.handle = lambda request: fail(refusals.pop()) if refusals else handle(request)
        message = final(encode_fragment(b"r" * 16, 0, 1, encode_service_request([make_surb()], b"again")))
        self.failureResultOf(backend.deliver(message), ServiceBusy)
        self.assertEqual(sender.sent, [])
        self.successResultOf(backend.deliver(message))
        self.assertEqual(len(sender.sent), 1)
