"""
The whole provider over real loopback TCP and TLS, with a real SQLite file.
"""

import os
import sqlite3

from nacl.signing import SigningKey
from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from nymprov.client import session as provider_client
from nymprov.provider.config import ProviderConfig
from nymprov.provider.service import ProviderService
from nymprov.sphinx import Destination, Node, build_packet, encode_address
from nymprov.net.tls import certificate_fingerprint
from nymprov.wire import clientapi as api
from nymprov.wire.envelope import ENVELOPE_MARK
from nymprov.wire.frames import FrameDecoder, encode_frame

from tests.support import wait_for


class Recorder(Protocol):
    """Keeps what a peer sends and notices when it hangs up."""

    def __init__(self):
        self.received = b""
        self.closed = Deferred()

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason):
        self.closed.callback(None)


class FirstLayerMix(Protocol):
    """A stand-in first-layer mix: records each frame and when it came."""

    def __init__(self, arrivals):
        self._decoder = FrameDecoder()
        self._arrivals = arrivals

    def dataReceived(self, data):
        for frame in self._decoder.feed(data):
            self._arrivals.append((reactor.seconds(), frame.packet))


class ProviderFixture:
    """Start, restart and talk to a provider on loopback."""

    async def start_provider(self, data_dir=None, **overrides):
        if data_dir is None:
            data_dir = self.mktemp()
        settings = dict(
            data_dir=data_dir,
            mix_listen=["tcp:0:interface=127.0.0.1"],
            client_listen=["tcp:0:interface=127.0.0.1"],
            stats_interval=0,
            register_rate=100,
        )
        settings.update(overrides)
        service = ProviderService(ProviderConfig(**settings), reactor)
        service.startService()
        await service.when_started()
        self.addCleanup(lambda: service.running and service.stopService())
        self.data_dir = data_dir
        return service

    async def session(self, service):
        address = service.client_ports[0].getHost()
        fingerprint = certificate_fingerprint(service.certificate)
        session = await provider_client.connect(reactor, address.host, address.port, fingerprint)
        self.addCleanup(session.close)
        return session

    async def register(self, service):
        key = SigningKey.generate()
        session = await self.session(service)
        token = await session.register(key)
        return key, bytes(key.verify_key), token, session

    async def mix_link(self, service):
        address = service.mix_ports[0].getHost()
        recorder = Recorder()
        await connectProtocol(TCP4ClientEndpoint(reactor, address.host, address.port), recorder)
        self.addCleanup(self.hang_up, recorder)
        return recorder

    def hang_up(self, recorder):
        recorder.transport.loseConnection()
        return recorder.closed

    async def first_layer_mix(self):
        """A stand-in first-layer mix on loopback: (its address, its Sphinx key, what it receives)."""
        from nymprov.sphinx import KeyPair

        arrivals = []
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Factory.forProtocol(lambda: FirstLayerMix(arrivals))
        )
        self.addCleanup(port.stopListening)
        return port.getHost().port, KeyPair.generate(), arrivals

    def enveloped_packet(self, service, destination, body, mix_port, mix_key, ack_id):
        """A final-hop packet whose envelope carries ``body`` and a real SURB-ACK through the mix."""
        from nymprov.sphinx import SURB, PacketSize
        from nymprov.wire.envelope import encode_envelope

        mix_address = encode_address("127.0.0.1", mix_port)
        surb = SURB.create([Node(mix_address, mix_key.public_bytes)], [0], Destination(b"\x05" * 32, b"\x06" * 16))
        ack_hop, ack_packet = surb.use(encode_envelope(ack_id), PacketSize.ACK.payload_size)
        [node_address] = service.node.own_addresses
        return build_packet(encode_envelope(body, ack_hop, ack_packet),
                            [Node(node_address, service.keys.sphinx.public_bytes)], [0],
                            Destination(destination, b"\x00" * 16))

    def ack_ids(self, arrivals, mix_key):
        """The identifiers of the SURB-ACKs the stand-in mix received."""
        from nymprov.sphinx import FinalHop, process_packet
        from nymprov.wire.envelope import decode_envelope

        found = []
        for _, packet in arrivals:
            hop = process_packet(packet, mix_key)
            self.assertIsInstance(hop, FinalHop)
            found.append(decode_envelope(hop.message()).body)
        return found

    def packet_for(self, service, destination, message, surb_id=b"\x00" * 16):
        [node_address] = service.node.own_addresses
        route = [Node(node_address, service.keys.sphinx.public_bytes)]
        return build_packet(message, route, [0], Destination(destination, surb_id))


class IngestPullAckTests(ProviderFixture, TestCase):
    """
    Packets for a registered client go in through the mix link and come out
    through a pull over TLS; nothing is lost across restarts.
    """

    def test_nothing_lost_across_restart(self):
        """
        Messages ingested before a restart are pulled after it, padded to
        the requested slot count; once acked they stay gone, across another
        restart too.
        """
        return ensureDeferred(self._nothing_lost_across_restart())

    async def _nothing_lost_across_restart(self):
        service = await self.start_provider()
        key, address, token, session = await self.register(service)
        session.close()
        link = await self.mix_link(service)
        sent = [b"message %d" % i for i in range(20)]
        for message in sent:
            link.transport.write(encode_frame(self.packet_for(service, address, message)))
        await wait_for(lambda: service.counters.get("packets.delivered") == 20, "20 deliveries")
        await service.stopService()

        service = await self.start_provider(self.data_dir)
        session = await self.session(service)
        await session.authenticate(address, token)
        batch = await session.pull(32, pad=True)
        self.assertEqual(len(batch.slots), 32)
        self.assertEqual(sorted(batch.messages), sorted(sent))
        self.assertEqual(await session.ack(batch.lease_id), 20)
        empty = await session.pull(8)
        self.assertEqual(empty.messages, ())
        await service.stopService()

        service = await self.start_provider(self.data_dir)
        session = await self.session(service)
        await session.authenticate(address, token)
        self.assertEqual((await session.pull(8)).messages, ())
        sizes = await service.store.sizes()
        self.assertEqual(sizes["messages"], 0)

    def test_unacked_lease_returns(self):
        """
        Messages pulled but never acked come back once the lease lapses.
        """
        return ensureDeferred(self._unacked_lease_returns())

    async def _unacked_lease_returns(self):
        service = await self.start_provider(lease_seconds=0.2)
        key, address, token, session = await self.register(service)
        link = await self.mix_link(service)
        link.transport.write(encode_frame(self.packet_for(service, address, b"keep me")))
        await wait_for(lambda: service.counters.get("packets.delivered") == 1, "delivery")
        first = await session.pull(4)
        self.assertEqual(first.messages, (b"keep me",))
        self.assertEqual((await session.pull(4)).messages, ())
        await deferLater(reactor, 0.3, lambda: None)
        again = await session.pull(4)
        self.assertEqual(again.messages, (b"keep me",))


class LeaseEndsWithConnectionTests(ProviderFixture, TestCase):
    async def test_reconnect_sees_unacked_messages(self):
        """
        A client whose connection drops between PULL and ACK reconnects at
        once and pulls the same messages again (its lease ended with its
        connection; they stayed hidden for the whole 60 s lease).
        """
        service = await self.start_provider()
        key, address, token, session = await self.register(service)
        link = await self.mix_link(service)
        link.transport.write(encode_frame(self.packet_for(service, address, b"keep me")))
        await wait_for(lambda: service.counters.get("packets.delivered") == 1, "delivery")
        self.assertEqual((await session.pull(4)).messages, (b"keep me",))
        session.protocol.transport.abortConnection()
        await wait_for(lambda: service.counters.get("client_api.leases_released") == 1, "the lease to end")
        again = await self.session(service)
        await again.authenticate(address, token)
        self.assertEqual((await again.pull(4)).messages, (b"keep me",))


class OverdueDeliveryTests(ProviderFixture, TestCase):
    async def test_late_write_still_acks_once(self):
        """
        A SQLite write that outlives the delivery deadline (here: another
        process holds the file's write lock) is counted overdue, not
        cancelled: when it commits, its SURB-ACK goes to the first-layer mix
        and the inbox holds the message once.  (The deadline used to cancel
        the delivery while the write still committed: stored, never acked,
        so the sender retransmitted and the inbox held it twice.)
        """
        mix_port, mix_key, arrivals = await self.first_layer_mix()
        service = await self.start_provider(
            first_layer=[("127.0.0.1", mix_port)], deliver_timeout=0.2, unwrap_workers=0)
        key, address, token, session = await self.register(service)
        packet = self.enveloped_packet(service, address, b"late but kept", mix_port, mix_key, b"L" * 16)

        holder = sqlite3.connect(service.config.db_path, isolation_level=None)
        self.addCleanup(holder.close)
        holder.execute("BEGIN EXCLUSIVE")
        link = await self.mix_link(service)
        link.transport.write(encode_frame(packet))
        counters = service.counters
        await wait_for(
            lambda: counters.get("backend.inbox.overdue") or counters.get("packets.dropped", "backend_timeout"),
            "the delivery deadline")
        self.assertEqual(counters.get("packets.dropped", "backend_timeout"), 0)
        self.assertEqual(arrivals, [])
        holder.execute("COMMIT")

        await wait_for(lambda: arrivals, "the SURB-ACK")
        self.assertEqual(self.ack_ids(arrivals, mix_key), [b"L" * 16])
        self.assertEqual(counters.get("packets.delivered"), 1)
        self.assertEqual(counters.get("acks.sent"), 1)
        self.assertEqual((await session.pull(4)).messages, (bytes([ENVELOPE_MARK]) + b"late but kept",))


class AckBudgetTests(ProviderFixture, TestCase):
    async def test_acks_relayed_per_inbox_within_budget(self):
        """
        Whoever can reach an inbox chooses the SURB-ACKs the provider sends
        for it; with ``--ack-rate 1`` (burst 2) five messages for one inbox
        are all stored but only two ACKs leave, the rest dropped and
        counted; another inbox has its own budget.
        """
        mix_port, mix_key, arrivals = await self.first_layer_mix()
        service = await self.start_provider(first_layer=[("127.0.0.1", mix_port)], ack_rate=1.0, unwrap_workers=0)
        _, flooded, _, _ = await self.register(service)
        _, other, _, _ = await self.register(service)
        packets = [self.enveloped_packet(service, flooded, b"m%d" % i, mix_port, mix_key, b"%016d" % i)
                   for i in range(5)]
        packets.append(self.enveloped_packet(service, other, b"other", mix_port, mix_key, b"O" * 16))
        link = await self.mix_link(service)
        link.transport.write(b"".join(encode_frame(p) for p in packets))
        counters = service.counters
        await wait_for(lambda: counters.get("packets.delivered") == 6, "the deliveries")
        await wait_for(lambda: len(arrivals) == 3, "the ACKs within budget")
        self.assertEqual(sorted(self.ack_ids(arrivals, mix_key)), [b"%016d" % 0, b"%016d" % 1, b"O" * 16])
        self.assertEqual(counters.get("acks.sent"), 3)
        self.assertEqual(counters.get("acks.dropped", "rate_limited"), 3)


class UnwrapWorkerTests(ProviderFixture, TestCase):
    """
    With unwrap workers, mix packets are unwrapped in child processes and
    nothing in their hands is lost at stop.
    """

    def test_workers_unwrap_and_drain(self):
        """
        Packets sent over the mix link are stored, some unwrapped in the
        worker, and a stop right after sending loses none of them; the
        worker process is gone afterwards.
        """
        return ensureDeferred(self._workers())

    async def _workers(self):
        service = await self.start_provider(unwrap_workers=1)
        [worker] = service.unwrapper.workers
        pid = worker.transport.pid
        key, address, token, session = await self.register(service)
        session.close()
        link = await self.mix_link(service)
        sent = [b"message %d" % i for i in range(300)]
        link.transport.write(b"".join(encode_frame(self.packet_for(service, address, m)) for m in sent))
        await wait_for(lambda: service.counters.get("packets.received", "mix") == 300, "300 packets read")
        await service.stopService()
        self.assertEqual(service.counters.get("packets.delivered"), 300)
        self.assertGreater(service.unwrapper.batches_in_workers, 0)
        self.assertRaises(ProcessLookupError, os.kill, pid, 0)

        service = await self.start_provider(self.data_dir, unwrap_workers=0)
        self.assertIsNone(service.unwrapper)
        session = await self.session(service)
        await session.authenticate(address, token)
        batch = await session.pull(64)
        received = list(batch.messages)
        while batch.messages:
            await session.ack(batch.lease_id)
            batch = await session.pull(64)
            received += batch.messages
        self.assertEqual(sorted(received), sorted(sent))


class BadInputTests(ProviderFixture, TestCase):
    """
    Every kind of bad input gets its typed error and changes no stored
    state.
    """

    async def stored(self, service):
        return (await service.store.sizes())["messages"]

    def test_wrong_and_foreign_tokens(self):
        """
        A wrong token and another client's token are both refused with
        BAD_TOKEN; nobody sees another client's messages.
        """
        return ensureDeferred(self._tokens())

    async def _tokens(self):
        service = await self.start_provider()
        _, alice, alice_token, _ = await self.register(service)
        _, bob, bob_token, _ = await self.register(service)
        link = await self.mix_link(service)
        link.transport.write(encode_frame(self.packet_for(service, alice, b"for alice")))
        await wait_for(lambda: service.counters.get("packets.delivered") == 1, "delivery")
        for token in (b"\x00" * 32, bob_token):
            session = await self.session(service)
            error = await self.assertFailure(session.authenticate(alice, token), api.RemoteError)
            self.assertEqual(error.code, api.ErrorCode.BAD_TOKEN)
            error = await self.assertFailure(session.pull(4), api.RemoteError)
            self.assertEqual(error.code, api.ErrorCode.NOT_AUTHENTICATED)
        session = await self.session(service)
        await session.authenticate(bob, bob_token)
        self.assertEqual((await session.pull(4)).messages, ())
        self.assertEqual(await self.stored(service), 1)

    def test_replay_and_bad_mac(self):
        """
        A replayed packet and a packet with a broken MAC are counted by
        reason and store nothing; the mix link stays up for good packets.
        """
        return ensureDeferred(self._replay_and_bad_mac())

    async def _replay_and_bad_mac(self):
        service = await self.start_provider()
        _, address, _, _ = await self.register(service)
        link = await self.mix_link(service)
        packet = self.packet_for(service, address, b"once")
        broken = bytearray(self.packet_for(service, address, b"broken"))
        broken[40] ^= 0x80
        link.transport.write(encode_frame(packet) + encode_frame(packet) + encode_frame(bytes(broken)))
        counters = service.counters
        await wait_for(lambda: counters.get("packets.received", "mix") == 3, "three packets")
        await wait_for(lambda: counters.get("packets.delivered") == 1, "one delivery")
        self.assertEqual(counters.get("packets.dropped", "replay"), 1)
        self.assertEqual(counters.get("packets.dropped", "bad_mac"), 1)
        self.assertEqual(await self.stored(service), 1)
        link.transport.write(encode_frame(self.packet_for(service, address, b"after")))
        await wait_for(lambda: counters.get("packets.delivered") == 2, "a later delivery")

    def test_unknown_frame_tag_disconnects(self):
        """
        A frame with an unknown size tag closes the mix link connection, is
        counted, and stores nothing.
        """
        return ensureDeferred(self._unknown_tag())

    async def _unknown_tag(self):
        service = await self.start_provider()
        link = await self.mix_link(service)
        link.transport.write(bytes([7, 9, 0]) + b"\x00" * 100)
        await link.closed
        self.assertEqual(service.counters.get("mix_link.frame_error", "unknown_size_tag"), 1)
        self.assertEqual(await self.stored(service), 0)

    def test_truncated_frame_stores_nothing(self):
        """
        A peer that hangs up in the middle of a frame leaves nothing behind.
        """
        return ensureDeferred(self._truncated())

    async def _truncated(self):
        service = await self.start_provider()
        _, address, _, _ = await self.register(service)
        link = await self.mix_link(service)
        frame = encode_frame(self.packet_for(service, address, b"cut short"))
        link.transport.write(frame[: len(frame) // 2])
        link.transport.loseConnection()
        await link.closed
        await wait_for(lambda: service.counters.get("mix_link.connections") == 1, "the connection")
        await deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(service.counters.get("packets.received", "mix"), 0)
        self.assertEqual(await self.stored(service), 0)

    def test_garbage_client_request(self):
        """
        A garbage client-API frame gets a MALFORMED error and the
        connection is closed.
        """
        return ensureDeferred(self._garbage_request())

    async def _garbage_request(self):
        service = await self.start_provider(client_tls=False)
        address = service.client_ports[0].getHost()
        recorder = Recorder()
        await connectProtocol(TCP4ClientEndpoint(reactor, address.host, address.port), recorder)
        self.addCleanup(self.hang_up, recorder)
        recorder.transport.write(b"\x00\x00\x00\x06\x02\x00\x00\x00\x07\x99")
        await recorder.closed
        error = api.decode_response(recorder.received[4:])
        self.assertIsInstance(error, api.Error)
        self.assertEqual(error.code, api.ErrorCode.MALFORMED)
        self.assertEqual(await self.stored(service), 0)


class ForwardHopTests(ProviderFixture, TestCase):
    """
    A client's packet that names the provider as first hop is forwarded to
    the first layer after its delay.
    """

    def test_forward_hop_waits_for_delay(self):
        """
        The packet reaches the first-layer mix no sooner than its delay
        after the client handed it over, and the mix can unwrap it.
        """
        return ensureDeferred(self._forward_hop())

    async def _forward_hop(self):
        from nymprov.sphinx import FinalHop, KeyPair, process_packet

        arrivals = []
        mix_port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Factory.forProtocol(lambda: FirstLayerMix(arrivals))
        )
        self.addCleanup(mix_port.stopListening)
        mix_address = encode_address("127.0.0.1", mix_port.getHost().port)
        mix_key = KeyPair.generate()
        service = await self.start_provider(first_layer=[("127.0.0.1", mix_port.getHost().port)])
        _, _, _, session = await self.register(service)
        [own_address] = service.node.own_addresses
        delay = 0.4
        packet = build_packet(
            b"into the mixnet",
            [Node(own_address, service.keys.sphinx.public_bytes), Node(mix_address, mix_key.public_bytes)],
            [int(delay * 1e9), 0],
            Destination(b"\x55" * 32, b"\x00" * 16),
        )
        handed_over = reactor.seconds()
        await session.send(own_address, packet)
        await wait_for(lambda: arrivals, "the forwarded packet")
        [(arrived, forwarded)] = arrivals
        self.assertGreaterEqual(arrived - handed_over, delay)
        hop = process_packet(forwarded, mix_key)
        self.assertIsInstance(hop, FinalHop)
        self.assertEqual(hop.message(), b"into the mixnet")
        # The same packet again is a replay, refused with its typed error.
        error = await self.assertFailure(session.send(own_address, packet), api.RemoteError)
        self.assertEqual(error.code, api.ErrorCode.REPLAY)


class AnnounceTests(ProviderFixture, TestCase):
    """
    An announced address counts as the node's own, beside the bound one.
    """

    def test_announced_address_is_own(self):
        """
        With ``--announce``, a client naming the announced address as first
        hop takes the Loopix route, as with the bound address.
        """
        return ensureDeferred(self._announce())

    async def _announce(self):
        service = await self.start_provider(announce=["127.0.0.1:1"])
        bound = service.mix_ports[0].getHost()
        self.assertEqual(
            service.node.own_addresses,
            {encode_address("127.0.0.1", 1), encode_address("127.0.0.1", bound.port)},
        )
