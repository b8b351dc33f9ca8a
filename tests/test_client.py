"""
The client on a Clock with a recording session: retransmission, ACKs,
replies and cover traffic, with real Sphinx packets unwrapped hop by hop.
"""

from twisted.internet.defer import CancelledError, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from nymprov.client import ClientKeys, DeliveryFailed, NotEnoughSurbs, NymClient
from nymprov.sphinx import FinalHop, KeyPair, PacketSize, process_packet
from nymprov.topology import MixNode, ProviderNode, Topology
from nymprov.wire import clientapi as api
from nymprov.wire.envelope import decode_envelope, encode_envelope


def make_network(layers=3):
    """A topology of one mix per layer and two providers, with their key pairs."""
    keypairs, mixes, providers = {}, [], []
    for layer in range(1, layers + 1):
        kp = KeyPair.generate()
        node = MixNode(bytes([layer]) * 32, kp.public_bytes, "127.0.0.1", 3000 + layer, layer)
        mixes.append(node)
        keypairs[node.address] = kp
    for index in (1, 2):
        kp = KeyPair.generate()
        node = ProviderNode(bytes([100 + index]) * 32, kp.public_bytes, "127.0.0.1", 4000 + index,
                            "127.0.0.1", 5000 + index, True, b"f" * 32)
        providers.append(node)
        keypairs[node.address] = kp
    return Topology(mixes, providers), keypairs


class RecordingSession:
    """Stands in for a provider session; keeps what the client sent."""

    def __init__(self):
        self.sent = []
        self.refuse = False

        class _Protocol:
            class closed:
                called = False

        self.protocol = _Protocol()

    def register(self, signing_key):
        return succeed(b"t" * 32)

    def send(self, first_hop, packet):
        if self.refuse:
            from twisted.internet.defer import fail

            return fail(api.RemoteError(api.ErrorCode.RATE_LIMITED, "slow down"))
        self.sent.append((first_hop, packet))
        return succeed(None)

    def close(self):
        return succeed(None)


class ClientTests(SynchronousTestCase):
    """Reliable delivery and cover traffic, driven by a Clock."""

    def setUp(self):
        self.topology, self.keypairs = make_network()
        self.clock = Clock()
        self.alice, self.alice_session = self.make_client(self.topology.providers[0], ack_timeout=5.0)
        self.bob, self.bob_session = self.make_client(self.topology.providers[1], ack_timeout=5.0)

    def make_client(self, provider, **kwargs):
        # Unshaped, so that each packet leaves as it is made; the shaped
        # stream has its own tests (test_client_stream).
        kwargs.setdefault("shaped", False)
        kwargs.setdefault("loop_rate", 0.0)
        session = RecordingSession()
        client = NymClient(ClientKeys.generate(), self.topology, provider.identity, reactor=self.clock,
                           clock=self.clock, connect=lambda: succeed(session), mean_delay=0.0,
                           pull_interval=1000.0, max_attempts=3, **kwargs)
        self.successResultOf(client.session())
        return client, session

    def walk(self, first_hop, packet):
        """Unwrap ``packet`` at each hop from ``first_hop`` to its final hop."""
        address = first_hop
        while True:
            hop = process_packet(packet, self.keypairs[address])
            if isinstance(hop, FinalHop):
                return address, hop
            address, packet = hop.next_address, hop.packet

    def deliver(self, sent, recipient):
        """
        Carry a sent packet to ``recipient`` as its provider would: store
        the body, then return the SURB-ACK's stored form for the sender.
        """
        provider_address, hop = self.walk(*sent)
        self.assertEqual(provider_address, recipient.provider.address)
        self.assertEqual(hop.destination, recipient.keys.identity_public_bytes)
        envelope = decode_envelope(hop.message())
        recipient.handle_stored(encode_envelope(envelope.body))
        self.assertTrue(self.topology.is_first_layer(envelope.ack_first_hop))
        self.assertEqual(len(envelope.ack_packet), PacketSize.ACK.packet_size)
        _, ack_hop = self.walk(envelope.ack_first_hop, envelope.ack_packet)
        return ack_hop.destination, encode_envelope(decode_envelope(ack_hop.message()).body)

    def test_acknowledged_message_arrives_and_send_fires(self):
        """A message arrives whole at B and A's send fires once B's provider ACKs it."""
        d = self.alice.send(self.bob.address, b"hello bob")
        [sent] = self.alice_session.sent
        self.assertTrue(self.topology.is_first_layer(sent[0]))
        destination, ack = self.deliver(sent, self.bob)
        self.assertEqual(destination, self.alice.keys.identity_public_bytes)
        self.assertNoResult(d)
        self.alice.handle_stored(ack)
        self.successResultOf(d)
        message = self.successResultOf(self.bob.inbox.get())
        self.assertEqual(message.data, b"hello bob")
        self.assertFalse(self.clock.getDelayedCalls())

    def test_unacknowledged_fragment_is_sent_again_over_a_fresh_packet(self):
        """Without an ACK the fragment is resent after the timeout, then fails after max_attempts."""
        d = self.alice.send(self.bob.address, b"lost")
        self.clock.advance(4.9)
        self.assertEqual(len(self.alice_session.sent), 1)
        self.clock.advance(0.2)
        self.assertEqual(len(self.alice_session.sent), 2)
        self.assertNotEqual(self.alice_session.sent[0][1], self.alice_session.sent[1][1])
        self.clock.advance(5.0)
        self.assertEqual(len(self.alice_session.sent), 3)
        self.clock.advance(5.0)
        self.failureResultOf(d, DeliveryFailed)
        self.assertEqual(self.alice.counters.get("packets.sent", "retransmission"), 2)

    def test_a_late_ack_completes_the_fragment(self):
        """The ACK of the first sending, arriving after the second left, still completes the send."""
        d = self.alice.send(self.bob.address, b"slow")
        self.clock.advance(5.0)
        self.assertEqual(len(self.alice_session.sent), 2)
        _, ack = self.deliver(self.alice_session.sent[0], self.bob)
        self.alice.handle_stored(ack)
        self.successResultOf(d)
        self.assertEqual(self.alice.counters.get("acks.late"), 1)
        self.assertFalse(self.clock.getDelayedCalls())
        # The second sending's ACK is one more of a fragment already done.
        _, ack = self.deliver(self.alice_session.sent[1], self.bob)
        self.alice.handle_stored(ack)
        self.assertEqual(self.alice.counters.get("acks.received", "unknown"), 1)

    def test_a_cancelled_send_awaits_no_ack(self):
        """Cancelling a send (a caller's timeout) leaves no ACK id or timer behind."""
        d = self.alice.send(self.bob.address, b"never mind")
        self.clock.advance(5.0)  # the fragment is sent a second time
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.clock.advance(5.0)
        self.assertEqual(self.alice.stats()["acks.awaited"], 0)
        self.assertFalse(self.clock.getDelayedCalls())

    def test_queued_acks_are_waited_for(self):
        """
        While nothing sent after a fragment has been ACKed either, its
        timeout waits on (the ACKs queue, they are not lost), up to three
        more timeouts; once a later fragment's ACK arrives, an earlier one
        still missing is sent again at its next timeout.
        """
        first = self.alice.send(self.bob.address, b"first")
        self.clock.advance(1.0)
        self.alice.send(self.bob.address, b"second")
        self.clock.advance(1.0)
        self.alice.send(self.bob.address, b"third")
        sent = list(self.alice_session.sent)
        self.clock.pump([0.1] * 35)  # past the first one's timeout
        self.assertEqual(len(self.alice_session.sent), 3)
        self.assertEqual(self.alice.counters.get("acks.held"), 1)
        _, ack = self.deliver(sent[2], self.bob)
        self.alice.handle_stored(ack)
        self.clock.pump([0.1] * 50)  # the first one's next timeout: the third's ACK came
        self.assertEqual(self.alice.counters.get("packets.sent", "retransmission"), 2)
        self.assertNoResult(first)

    def test_holds_are_bounded(self):
        """
        With no ACK at all, a fragment is sent again after four timeouts,
        not never; the newest one (nothing sent after it) is never held.
        """
        self.alice.send(self.bob.address, b"first")  # t = 0
        self.clock.advance(1.0)
        second = self.alice.send(self.bob.address, b"second")  # t = 1: sent again at 6 and 11, failed at 16
        # In steps: a timer set while Clock.advance runs counts from its end.
        self.clock.pump([0.1] * 189)
        self.assertEqual(self.alice.counters.get("acks.held"), 3)
        self.assertEqual(self.alice.counters.get("packets.sent", "retransmission"), 2)
        self.clock.pump([0.1] * 6)  # the first one's fourth timeout (each step late by up to one step)
        self.assertEqual(self.alice.counters.get("packets.sent", "retransmission"), 3)
        self.failureResultOf(second, DeliveryFailed)

    def test_retransmitted_copy_is_delivered_once(self):
        """Both the lost-ACK original and its retransmission reach B; B sees the message once."""
        d = self.alice.send(self.bob.address, b"twice")
        self.clock.advance(5.0)
        first, second = self.alice_session.sent
        self.deliver(first, self.bob)  # its ACK is lost
        _, ack = self.deliver(second, self.bob)
        self.alice.handle_stored(ack)
        self.successResultOf(d)
        self.assertEqual(len(self.bob.inbox.pending), 1)

    def test_refused_send_is_retransmitted(self):
        """A packet the provider refuses is sent again when its ACK timer fires."""
        self.alice_session.refuse = True
        d = self.alice.send(self.bob.address, b"retry")
        self.assertEqual(self.alice.counters.get("packets.send_failed"), 1)
        self.alice_session.refuse = False
        self.clock.advance(5.0)
        _, ack = self.deliver(self.alice_session.sent[0], self.bob)
        self.alice.handle_stored(ack)
        self.successResultOf(d)

    def test_long_message_and_reply_through_surbs(self):
        """A 10 KB message arrives in fragments; B's reply comes back through a SURB."""
        data = bytes(range(256)) * 40
        d = self.alice.send(self.bob.address, data, reply_surbs=2)
        for sent in self.alice_session.sent:
            _, ack = self.deliver(sent, self.bob)
            self.alice.handle_stored(ack)
        hint = self.successResultOf(d)
        message = self.successResultOf(self.bob.inbox.get())
        self.assertEqual(message.data, data)
        self.assertEqual(len(message.surbs), 2)
        reply = self.bob.reply(message, b"got it")
        [sent] = self.bob_session.sent
        _, ack = self.deliver(sent, self.alice)
        self.bob.handle_stored(ack)
        self.successResultOf(reply)
        answer = self.successResultOf(self.alice.inbox.get())
        self.assertEqual((answer.data, answer.is_reply, answer.in_reply_to), (b"got it", True, hint))
        self.assertEqual(len(message.surbs), 1)

    def test_reply_retransmission_uses_the_next_surb_then_fails(self):
        """A lost reply is resent through the next SURB; with none left it fails."""
        self.alice.send(self.bob.address, b"ask", reply_surbs=2)
        for sent in self.alice_session.sent:
            self.deliver(sent, self.bob)
        message = self.successResultOf(self.bob.inbox.get())
        d = self.bob.reply(message, b"answer")
        self.clock.advance(5.0)
        self.assertEqual(len(self.bob_session.sent), 2)
        self.clock.advance(5.0)
        self.failureResultOf(d, DeliveryFailed)
        self.assertRaises(NotEnoughSurbs, self.bob.reply, message, b"again")

    def test_cover_traffic_loops_back_and_is_dropped(self):
        """Loop cover goes out at the Poisson rate and is dropped when it comes back."""
        client, session = self.make_client(self.topology.providers[0], loop_rate=2.0)
        client.stream.start()
        self.clock.pump([0.1] * 300)
        count = len(session.sent)
        # 60 expected; a Poisson count this far off would be a bug.
        self.assertTrue(30 < count < 100, count)
        for sent in session.sent[:5]:
            self.deliver(sent, client)
        self.assertEqual(client.counters.get("cover.received"), 5)
        self.assertEqual(client.counters.get("stream.sent", "loop"), count)
        self.assertEqual(len(client.inbox.pending), 0)
        self.successResultOf(client.stop())
        self.clock.pump([0.1] * 300)
        self.assertEqual(len(session.sent), count)

    def test_garbage_in_the_inbox_is_counted_not_raised(self):
        """Stored bytes that are not ours are counted and dropped."""
        for stored in [b"", b"plain", b"\xe0" + bytes(100), b"\xe0short", b"\xe3"]:
            self.alice.handle_stored(stored)
        self.assertEqual(len(self.alice.inbox.pending), 0)
        self.assertGreater(self.alice.counters.get("received.dropped", "unreadable"), 0)

    def test_stored_handler_sees_messages_first(self):
        """
        A stored handler takes the messages it claims; the rest go on to
        the client's own handling.
        """
        taken = []

        def take_plain(stored):
            if stored.startswith(b"mine:"):
                taken.append(stored)
                return True
            return False

        self.alice.add_stored_handler(take_plain)
        self.alice.handle_stored(b"mine: a service reply")
        self.alice.handle_stored(b"plain")
        self.assertEqual(taken, [b"mine: a service reply"])
        self.assertEqual(self.alice.counters.get("received.dropped", "not_envelope"), 1)

    def test_loopix_route_starts_at_the_own_provider(self):
        """With loopix=True the first hop is the client's own provider."""
        client = NymClient(ClientKeys.generate(), self.topology, self.topology.providers[0].identity,
                           reactor=self.clock, clock=self.clock, connect=lambda: succeed(RecordingSession()),
                           loopix=True, mean_delay=0.0)
        first_hop, packet = client.router.forward(b"x", b"\x01" * 32, self.topology.providers[1])
        self.assertEqual(first_hop, self.topology.providers[0].address)
        self.assertEqual(self.walk(first_hop, packet)[0], self.topology.providers[1].address)
