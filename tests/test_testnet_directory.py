"""
``nym-provider testnet`` with epochs: a directory process beside the nodes,
every node published in its document, client configs pointing at it, and
topology.json written from the current document.
"""

import os

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from nymprov.client import ClientKeys, NymClient
from nymprov.client.network import ClientNetwork
from nymprov.metrics import Counters
from nymprov.tools.testnet import Testnet
from nymprov.topology import load_topology

from tests.support import wait_for

EPOCH = 3.0


class TestnetDirectoryTests(TestCase):
    timeout = 120

    async def test_testnet_with_a_directory(self):
        net = Testnet(self.mktemp(), layers=2, per_layer=1, providers=2, mean_delay_ms=5, epoch_length=EPOCH)
        self.addCleanup(net.stop)
        await net.start()
        self.assertTrue(net.nodes["directory"].running)
        with open(net.client_config_paths[0]) as f:
            config = f.read()
        self.assertIn(f'directory = "{net.network.url}"', config)
        self.assertIn(net.network.key_text, config)

        network = ClientNetwork(reactor, net.network.url, net.network.key, Counters())
        topology = await network.start(interval=0.5, lead=0.2)
        self.addCleanup(network.stop)
        await wait_for(lambda: len(topology.current().nodes) == 4, "every node in the client's topology")
        listed = {n.identity for n in topology.current().nodes}
        written = load_topology(net.topology_path)
        self.assertEqual({n.identity for n in written.nodes}, listed)

        # Clients route by the document and reach each other across a boundary.
        providers = topology.current().providers
        alice, bob = [
            NymClient(ClientKeys.generate(), topology, p.identity, reactor=reactor, mean_delay=0.005,
                      pull_interval=0.1, ack_timeout=1.5, max_attempts=30, shaped=False)
            for p in providers
        ]
        for client in (alice, bob):
            await client.start()
            self.addCleanup(client.stop)
        start_epoch = topology.epoch_of_next_packet()
        sent = []
        while topology.epoch_of_next_packet() <= start_epoch + 1:
            sent.append(os.urandom(16))
            await alice.send(bob.address, sent[-1])
        received = set()
        while len(received) < len(sent):
            d = bob.inbox.get()
            d.addTimeout(30, reactor)
            received.add((await d).data)
        self.assertEqual(received, set(sent))
        # The file follows the document as keys rotate.
        await wait_for(
            lambda: load_topology(net.topology_path).nodes[0].sphinx_key
            != written.nodes[0].sphinx_key, "topology.json rewritten after a rotation", limit=2 * EPOCH + 5,
        )


class ClientCommandTests(TestCase):
    """nym-client with a testnet config follows the directory."""

    timeout = 120

    async def test_nym_client_send_and_receive(self):
        import sys

        from twisted.internet.utils import getProcessOutputAndValue

        net = Testnet(self.mktemp(), layers=1, per_layer=1, providers=2, mean_delay_ms=5, epoch_length=EPOCH)
        self.addCleanup(net.stop)
        await net.start()
        env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

        async def nym_client(*args):
            out, err, code = await getProcessOutputAndValue(
                sys.executable, ["-m", "nymprov.cli.client", *args], env=env, reactor=reactor)
            self.assertEqual(code, 0, err)
            self.assertNotIn(b"not used", err)  # the directory was reached
            return out.decode()

        a_dir, b_dir = (os.path.join(net.directory, "clients", f"client-{i}") for i in (1, 2))
        await nym_client("init", "--config", net.client_config_paths[0])
        bob = (await nym_client("init", "--config", net.client_config_paths[1])).split()[-1]
        with open(os.path.join(a_dir, "client.toml")) as f:
            self.assertIn(net.network.url, f.read())
        # Across at least one rotation after init.
        from twisted.internet.task import deferLater

        await deferLater(reactor, EPOCH + 0.5, lambda: None)
        await nym_client("send", "--data-dir", a_dir, bob, "hello across epochs")
        self.assertIn("hello across epochs", await nym_client("receive", "--data-dir", b_dir))
