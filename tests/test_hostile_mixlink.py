"""
Hostile peers of the mix link, through the user's path: a ``nym-provider
run`` subprocess on loopback, slow connections from one address and an
honest mix node on another.
"""

import time

from nacl.signing import SigningKey
from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from nymprov.client import session as provider_client
from nymprov.keys import load_keys
from nymprov.sphinx import Destination, Node, build_packet, encode_address
from nymprov.wire.frames import encode_frame

from tests.provider_process import Peer, open_peers, spawn_provider


class SlowPeerTests(TestCase):
    """Slow connections from one address cannot lock out other peers."""

    timeout = 120

    async def provider_with_client(self, *extra):
        process, data_dir = await spawn_provider(self, *extra)
        host, port = process.ports["client API"]
        session = await provider_client.connect(reactor, host, port, process.fingerprint(data_dir))
        self.addCleanup(session.close)
        key = SigningKey.generate()
        await session.register(key)
        mix_host, mix_port = process.ports["mix link"]
        route = [Node(encode_address(mix_host, mix_port), load_keys(data_dir).sphinx.public_bytes)]

        def frame(message):
            packet = build_packet(message, route, [0], Destination(bytes(key.verify_key), bytes(16)))
            return encode_frame(packet)

        return process, session, frame

    def test_one_address_cannot_fill_the_mix_link(self):
        """
        1,100 stalled connections from 127.0.0.3 (more than the global cap
        of 1,024) leave room for a mix node on 127.0.0.2, whose packet is
        delivered.
        """
        return ensureDeferred(self._one_address_cannot_fill_the_mix_link())

    async def _one_address_cannot_fill_the_mix_link(self):
        process, session, frame = await self.provider_with_client()
        host, port = process.ports["mix link"]
        slow = await open_peers(host, port, 1100, "127.0.0.3", b"\x07")
        self.addCleanup(lambda: [peer.transport.abortConnection() for peer in slow if peer.closed_at is None])

        honest = Peer()
        endpoint = TCP4ClientEndpoint(reactor, host, port, bindAddress=("127.0.0.2", 0))
        await connectProtocol(endpoint, honest)
        self.addCleanup(lambda: honest.closed_at is None and honest.transport.abortConnection())
        honest.transport.write(frame(b"from a real mix node"))

        delivered = []

        async def pulled():
            batch = await session.pull(1)
            delivered.extend(batch.messages)
            return bool(delivered)

        deadline = time.monotonic() + 20
        while not await pulled():
            self.assertIsNone(honest.closed_at, "the honest mix node was cut off")
            self.assertLess(time.monotonic(), deadline, "the honest packet was not delivered")
        self.assertIn(b"from a real mix node", delivered[0])
        # The stalled address got its share, not the whole listener.
        self.assertLess(sum(peer.closed_at is None for peer in slow), 1024)

    def test_dripping_bytes_do_not_keep_a_connection(self):
        """
        The idle timeout counts from the last complete frame: a peer that
        drips a byte every 0.2 s, never completing a frame, is cut off
        once the timeout has passed, while a peer sending whole frames is
        not.
        """
        return ensureDeferred(self._dripping_bytes())

    async def _dripping_bytes(self):
        process, session, frame = await self.provider_with_client("--idle-timeout", "1.5")
        host, port = process.ports["mix link"]
        # Taken before connecting: the provider's timer starts later.
        opened = time.monotonic()
        [dripper] = await open_peers(host, port, 1, "127.0.0.1", b"\x07")
        [sender] = await open_peers(host, port, 1, "127.0.0.2", b"\x07")
        sender.transport.write(frame(b"first")[1:])
        whole = frame(b"whole")
        self.assertEqual(whole[:1], b"\x07")  # as open_peers began it
        drip = iter(whole[1:])
        sent = 1

        while dripper.closed_at is None:
            self.assertLess(time.monotonic() - opened, 10, "the dripping peer was never cut off")
            dripper.transport.write(bytes([next(drip)]))
            if time.monotonic() - opened > 0.5 * sent:
                sender.transport.write(frame(b"more %d" % sent))
                sent += 1
            await deferLater(reactor, 0.2, lambda: None)
        self.assertGreaterEqual(dripper.closed_at - opened, 1.5)
        self.assertIsNone(sender.closed_at)
