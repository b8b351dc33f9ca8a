"""
End to end through key rotations (issue 11's Done-when): a directory, three
mix layers and two providers with epochs of a couple of seconds, and two
clients that route by the directory's documents.  A sends to B without pause
through three rotations; every message arrives once; SURB replies made
before a rotation and used after it, inside the grace period, arrive; a
packet built for a retired key is refused and counted.
"""

import os

from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from nymprov.client import ClientKeys, NymClient
from nymprov.client.network import ClientNetwork
from nymprov.directory.config import DirectoryConfig
from nymprov.directory.service import DirectoryService
from nymprov.metrics import Counters
from nymprov.mixnode.config import MixNodeConfig
from nymprov.mixnode.service import MixNodeService
from nymprov.netdoc.signed import key_text
from nymprov.node.mixsender import MixSenderPool
from nymprov.provider.config import ProviderConfig
from nymprov.provider.service import ProviderService
from nymprov.sphinx import Destination, build_packet
from nymprov.wire.frames import rotation_of_epoch

from tests.support import wait_for

EPOCH = 2.0
GRACE = 0.6
LOOPBACK = "tcp:0:interface=127.0.0.1"


class RotationEndToEndTests(TestCase):
    timeout = 120

    async def start(self, service):
        service.startService()
        self.addCleanup(lambda: service.stopService() if service.running else None)
        await service.when_started()
        return service

    def network(self):
        return dict(epoch_length=EPOCH, epoch_grace=GRACE, directory=self.url,
                    directory_key=key_text(self.directory.public_key), publish_interval=0.2)

    async def client(self, provider):
        network = ClientNetwork(reactor, self.url, self.directory.public_key, Counters())
        topology = await network.start(interval=0.2, lead=0.2)
        self.addCleanup(network.stop)
        client = NymClient(
            ClientKeys.generate(), topology, provider.keys.identity_public_bytes, reactor=reactor,
            mean_delay=0.005, pull_interval=0.1, ack_timeout=1.5, reply_surbs=1, max_attempts=30,
            shaped=False,
        )
        await client.start()
        self.addCleanup(client.stop)
        return client, topology

    def epoch(self):
        return self.directory.registry.epochs.number_at(reactor.seconds())

    async def until_epoch(self, epoch, offset=0.0):
        """Wait for ``offset`` seconds into ``epoch``."""
        when = self.directory.registry.epochs.start_of(epoch) + offset
        await deferLater(reactor, max(0.0, when - reactor.seconds()), lambda: None)

    async def test_traffic_through_three_rotations(self):
        self.directory = await self.start(DirectoryService(DirectoryConfig(
            data_dir=os.path.abspath(self.mktemp()), listen=LOOPBACK, database=":memory:",
            epoch_length=EPOCH, expiry=3.0, grace=GRACE,
        ), reactor))
        self.url = f"http://127.0.0.1:{self.directory.ports[0].getHost().port}"
        mixes = []
        for layer in (1, 2, 3):
            mixes.append(await self.start(MixNodeService(MixNodeConfig(
                data_dir=os.path.abspath(self.mktemp()), mix_listen=(LOOPBACK,), layer=layer,
                stats_interval=0, max_delay=1.0, **self.network()), reactor)))
        providers = []
        for _ in range(2):
            providers.append(await self.start(ProviderService(ProviderConfig(
                data_dir=os.path.abspath(self.mktemp()), mix_listen=(LOOPBACK,), client_listen=(LOOPBACK,),
                store="memory", unwrap_workers=0, stats_interval=0, max_delay=1.0, **self.network()), reactor)))
        nodes = mixes + providers
        everyone = {n.keys.identity_public_bytes for n in nodes}

        def listed():
            latest = self.directory.registry.document(self.epoch(), reactor.seconds())
            from nymprov.netdoc import verify_document

            return {n.identity for n in verify_document(latest, self.directory.public_key).nodes}

        await wait_for(lambda: listed() == everyone, "every node in the document")
        await wait_for(lambda: all(n.directory.holder.latest is not None for n in nodes), "documents at the nodes")
        alice, alice_view = await self.client(providers[0])
        bob, _ = await self.client(providers[1])
        first_epoch = self.epoch()
        old_topology = alice_view.current()  # keys of first_epoch (or the next, near its end)
        old_epoch = alice_view.epoch_of_next_packet()

        # A sends to B without pause through three boundaries.
        sent, sends = [], []
        while self.epoch() < first_epoch + 3 or len(sent) < 10:
            data = os.urandom(64) + len(sent).to_bytes(4, "big")
            sent.append(data)
            sends.append(alice.send(bob.address, data))
            await deferLater(reactor, 0.05, lambda: None)
        await gatherResults(sends)
        received = []
        while len(received) < len(sent):
            d = bob.inbox.get()
            d.addTimeout(30, reactor)
            received.append((await d))
        self.assertEqual(sorted(m.data for m in received), sorted(sent))
        await deferLater(reactor, 0.5, lambda: None)
        self.assertEqual(len(bob.inbox.pending), 0, "a message arrived twice")
        for node in nodes:
            self.assertGreaterEqual(node.counters.get("keys.retired"), 2, node.name)

        # A SURB made before a boundary, used just after it (inside the grace).
        boundary = self.epoch() + 1
        await self.until_epoch(boundary - 1, EPOCH - 0.6)
        question = os.urandom(32)
        hint = await alice.send(bob.address, question)
        [asked] = [m for m in [await bob.inbox.get()] if m.data == question]
        await self.until_epoch(boundary, 0.05)
        reply = bob.reply(asked, b"answer after the boundary")
        answer = await alice.inbox.get()
        await reply
        self.assertEqual((answer.data, answer.in_reply_to), (b"answer after the boundary", hint))

        # A packet for a key long retired is refused and counted.  The
        # frame names the key by the parity of its epoch, so it is sent when
        # no live key has that parity: past the grace, in an epoch of the
        # other parity (otherwise it fails the MAC of the live key, counted
        # as bad_mac).
        epoch = self.epoch() + 1
        if epoch % 2 == old_epoch % 2:
            epoch += 1
        await self.until_epoch(epoch, GRACE + 0.2)
        entry, target = mixes[0], old_topology.first_layer[0]
        self.assertEqual(target.identity, entry.keys.identity_public_bytes)
        last = old_topology.by_identity(mixes[1].keys.identity_public_bytes)
        packet = build_packet(b"late", [target.route_node, last.route_node], [0, 0],
                              Destination(b"\x33" * 32, b"\x22" * 16))
        sender = MixSenderPool(reactor, Counters())
        self.addCleanup(sender.stopService)
        sender.send(target.address, packet, key_rotation=rotation_of_epoch(old_epoch))
        await wait_for(lambda: entry.counters.get("packets.dropped", "retired_key") >= 1, "the refusal")
