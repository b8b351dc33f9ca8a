"""
Real nodes with epochs and a directory, on loopback: they publish, rotate
their keys through several epochs keeping only the live ones (and their
replay files), and a stopped node leaves the document and comes back.
"""

import os

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from nymprov.directory.config import DirectoryConfig
from nymprov.directory.service import DirectoryService
from nymprov.mixnode.config import MixNodeConfig
from nymprov.mixnode.service import MixNodeService
from nymprov.netdoc.signed import key_text
from nymprov.provider.config import ProviderConfig
from nymprov.provider.service import ProviderService

from tests.support import wait_for

EPOCH = 1.0
GRACE = 0.25
LOOPBACK = "tcp:0:interface=127.0.0.1"


class NetworkNodesTests(TestCase):
    timeout = 60

    async def start(self, service):
        service.startService()
        self.addCleanup(lambda: service.stopService() if service.running else None)
        await service.when_started()
        return service

    def network(self):
        return dict(
            epoch_length=EPOCH, epoch_grace=GRACE, directory=self.url,
            directory_key=key_text(self.directory.public_key), publish_interval=0.1,
        )

    def mix(self, layer, data_dir=None):
        config = MixNodeConfig(
            data_dir=data_dir or os.path.abspath(self.mktemp()), mix_listen=(LOOPBACK,),
            layer=layer, stats_interval=0, **self.network(),
        )
        return MixNodeService(config, reactor)

    def members(self):
        document = self.directory.registry.document(
            self.directory.registry.epochs.number_at(reactor.seconds()), reactor.seconds()
        )
        from nymprov.netdoc import verify_document

        return {node.identity for node in verify_document(document, self.directory.public_key).nodes}

    async def test_publish_rotate_leave_return(self):
        self.directory = await self.start(DirectoryService(DirectoryConfig(
            data_dir=os.path.abspath(self.mktemp()), listen=LOOPBACK, database=":memory:",
            epoch_length=EPOCH, expiry=1.0, grace=GRACE,
        ), reactor))
        self.url = f"http://127.0.0.1:{self.directory.ports[0].getHost().port}"
        mixes = [await self.start(self.mix(layer)) for layer in (1, 2, 3)]
        provider = await self.start(ProviderService(ProviderConfig(
            data_dir=os.path.abspath(self.mktemp()), mix_listen=(LOOPBACK,), client_listen=(LOOPBACK,),
            store="memory", unwrap_workers=0, stats_interval=0, **self.network(),
        ), reactor))
        nodes = mixes + [provider]
        everyone = {n.keys.identity_public_bytes for n in nodes}
        await wait_for(lambda: self.members() == everyone, "every node in the document")
        # Each node routes by the document it fetched.
        await wait_for(lambda: all(n.directory.holder.latest is not None for n in nodes), "documents at the nodes")
        first = mixes[0].mix_ports[0].getHost()
        from nymprov.sphinx import encode_address

        self.assertTrue(provider.topology.is_first_layer(encode_address(first.host, first.port)))

        start_epoch = mixes[0].rotation.epochs.number_at(reactor.seconds())
        await wait_for(
            lambda: mixes[0].rotation.epochs.number_at(reactor.seconds() - GRACE) >= start_epoch + 3,
            "three rotations", limit=10,
        )
        await wait_for(lambda: self.members() == everyone, "every node still listed")
        for node in nodes:
            rotation = node.rotation
            held = rotation.ring.epochs_held
            self.assertLessEqual(len(held), 3)
            self.assertGreaterEqual(min(held), rotation.epochs.number_at(reactor.seconds()) - 1)
            key_files = sorted(os.listdir(rotation.ring.directory))
            self.assertEqual(key_files, sorted(f"sphinx-epoch-{e}.key" for e in held))
            replay_files = [f for f in os.listdir(rotation.replay_dir) if f.endswith(".sqlite")]
            self.assertLessEqual(len(replay_files), 3)
            self.assertGreaterEqual(node.counters.get("keys.retired"), 2)

        # A stopped node leaves within the expiry, and comes back with its keys.
        gone = mixes[1]
        data_dir = gone.config.data_dir
        identity = gone.keys.identity_public_bytes
        await gone.stopService()
        await wait_for(lambda: identity not in self.members(), "the stopped node to leave", limit=5)
        back = await self.start(self.mix(2, data_dir=data_dir))
        self.assertEqual(back.keys.identity_public_bytes, identity)
        await wait_for(lambda: identity in self.members(), "the node to come back")
        document = self.directory.registry.document(
            back.rotation.epochs.number_at(reactor.seconds()), reactor.seconds()
        )
        from nymprov.netdoc import verify_document

        [entry] = [n for n in verify_document(document, self.directory.public_key).nodes if n.identity == identity]
        for epoch, key in back.rotation.announced():
            if entry.key_for(epoch) is not None:
                self.assertEqual(entry.key_for(epoch), key)
