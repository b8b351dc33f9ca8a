"""
The backend contract through a whole provider on loopback TCP: real Sphinx
packets over the mix link (unwrapped by worker processes), a third-party
backend plugin that never sees an ACK, SURB-ACKs arriving at a stand-in
first-layer mix only for what the backend took, and the client API served
only for a backend that keeps an inbox.
"""

import os

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase

import nymprov.plugins
from nymprov.errors import ConfigError
from nymprov.provider.config import ProviderConfig
from nymprov.provider.service import ProviderService
from nymprov.sphinx import KeyPair, encode_address
from nymprov.tools.testnet import _free_ports
from nymprov.wire.envelope import encode_envelope
from nymprov.wire.frames import encode_frame

from tests.support import wait_for
from tests.test_integration import FirstLayerMix, ProviderFixture
from tests.test_node_acks import ack_id_of, real_ack

#: A third party's backend plugin, written against doc/providers.md: it
#: refuses bodies starting "refuse", holds those starting "slow" until the
#: test releases them, and takes the rest at once.  ``oldstyle`` is one
#: written for the contract before, where backends opened envelopes.
PLUGIN = '''
from twisted.internet.defer import Deferred, fail, succeed
from twisted.plugin import IPlugin
from zope.interface import implementer

from nymprov.errors import DeliveryError
from nymprov.interfaces import IProvider, IProviderMaker
from nymprov.plugins import BackendOptions


@implementer(IProvider)
class Judge:
    name = "judge"

    def __init__(self):
        self.seen = []
        self.held = []

    def deliver(self, message):
        self.seen.append(message)
        if message.body.startswith(b"refuse"):
            return fail(DeliveryError("refused"))
        if message.body.startswith(b"slow"):
            d = Deferred()
            self.held.append(d)
            return d
        return succeed(None)


@implementer(IProvider)
class OldStyle:
    name = "oldstyle"

    def deliver(self, destination, surb_id, message):
        return succeed(None)


class NoOptions(BackendOptions):
    optParameters = []


@implementer(IPlugin, IProviderMaker)
class Maker:
    options = NoOptions

    def __init__(self, name, kind):
        self.name, self.description, self._kind = name, f"a test backend: {name}", kind

    def make(self, config, options, sender, topology, reactor, **context):
        return self._kind()


judge = Maker("judge", Judge)
oldstyle = Maker("oldstyle", OldStyle)
'''


class InstalledPlugin:
    """Install PLUGIN in a ``nymprov/plugins`` directory of its own for the test."""

    def install_plugin(self):
        plugins = os.path.join(self.mktemp(), "nymprov", "plugins")
        os.makedirs(plugins)
        with open(os.path.join(plugins, "contract_test_backends.py"), "w") as f:
            f.write(PLUGIN)
        nymprov.plugins.__path__.append(plugins)
        self.addCleanup(nymprov.plugins.__path__.remove, plugins)


class AckThroughProviderTests(InstalledPlugin, ProviderFixture, TestCase):
    """SURB-ACKs reach the first layer only for what the backend took, after it took it."""

    async def start_with_mix(self, **settings):
        self.arrivals = []
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Factory.forProtocol(lambda: FirstLayerMix(self.arrivals)))
        self.addCleanup(port.stopListening)
        self.mix_address = encode_address("127.0.0.1", port.getHost().port)
        self.mix_key = KeyPair.generate()
        return await self.start_provider(first_layer=[("127.0.0.1", port.getHost().port)], unwrap_workers=1,
                                         **settings)

    def send(self, link, service, destination, body, ack_id):
        hop, ack = real_ack(self.mix_key, ack_id, self.mix_address)
        link.transport.write(encode_frame(self.packet_for(service, destination, encode_envelope(body, hop, ack))))

    def acks(self):
        return [ack_id_of(packet, self.mix_key) for _, packet in self.arrivals]

    async def test_third_party_backend(self):
        """
        Taken at once: ACKed; refused: never ACKed; slow: ACKed only once
        released, after the ACKs of messages that came later.  ACK count
        equals taken count, and the backend only ever saw bodies.
        """
        self.install_plugin()
        service = await self.start_with_mix(backend="judge")
        self.assertEqual(service.client_ports, [])
        link = await self.mix_link(service)
        fates = [("take", "slow", "refuse")[i % 3] for i in range(300)]
        ids = [os.urandom(16) for _ in fates]
        for i, (fate, ack_id) in enumerate(zip(fates, ids)):
            self.send(link, service, b"\x09" * 32, b"%s %d" % (fate.encode(), i), ack_id)
        taken = sorted(i for f, i in zip(fates, ids) if f == "take")
        await wait_for(lambda: len(self.arrivals) == len(taken), "the ACKs of the messages taken at once")
        await wait_for(lambda: len(service.backend.seen) == len(fates), "every message at the backend")
        self.assertEqual(sorted(self.acks()), taken)
        self.assertEqual(service.counters.get("packets.dropped", "delivery_failed"), fates.count("refuse"))
        for message, fate, i in zip(sorted(service.backend.seen, key=lambda m: int(m.body.split()[1])),
                                    fates, range(len(fates))):
            self.assertEqual(message.body, b"%s %d" % (fate.encode(), i))
        for d in service.backend.held:
            d.callback(None)
        accepted = sorted(i for f, i in zip(fates, ids) if f != "refuse")
        await wait_for(lambda: len(self.arrivals) == len(accepted), "the ACKs of the released messages")
        self.assertEqual(sorted(self.acks()), accepted)
        self.assertEqual(service.counters.get("acks.sent"), len(accepted))
        self.assertEqual(service.counters.get("packets.delivered"), len(accepted))

    async def test_inbox_acks_what_it_stored(self):
        """The inbox: one ACK per stored message; none for an unknown client."""
        service = await self.start_with_mix()
        _key, address, _token, session = await self.register(service)
        link = await self.mix_link(service)
        stored, stranger = [os.urandom(16) for _ in range(20)], os.urandom(16)
        self.send(link, service, b"\x44" * 32, b"to no one", stranger)
        for i, ack_id in enumerate(stored):
            self.send(link, service, address, b"message %d" % i, ack_id)
        await wait_for(lambda: len(self.arrivals) == len(stored), "20 ACKs")
        batch = await session.pull(32)
        self.assertEqual(sorted(batch.messages), sorted(encode_envelope(b"message %d" % i) for i in range(20)))
        self.assertEqual(sorted(self.acks()), sorted(stored))
        self.assertEqual(service.counters.get("packets.dropped", "unknown_destination"), 1)


class ClientApiMountTests(InstalledPlugin, ProviderFixture, TestCase):
    """The client port is opened only for a backend that keeps an inbox."""

    async def refuses(self, port):
        try:
            await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), Protocol())
        except ConnectionRefusedError:
            return True
        return False

    async def test_service_backends_do_not_listen(self):
        """echo, webproxy and forward open no client port; inbox does."""
        for backend, options in (("echo", []), ("webproxy", []), ("forward", ["url=http://127.0.0.1:1/"])):
            [port] = _free_ports(1)
            service = await self.start_provider(backend=backend, backend_option=options,
                                                client_listen=[f"tcp:{port}:interface=127.0.0.1"])
            self.assertEqual(service.client_ports, [])
            self.assertTrue(await self.refuses(port), backend)
            await service.stopService()
        service = await self.start_provider()
        self.assertEqual(len(service.client_ports), 1)
        await self.session(service)

    def test_old_contract_refused(self):
        """A backend whose deliver takes the old three arguments is a ConfigError naming --backend."""
        self.install_plugin()
        config = ProviderConfig(data_dir=self.mktemp(), store="memory", backend="oldstyle")
        with self.assertRaises(ConfigError) as caught:
            ProviderService(config, reactor).assemble()
        self.assertIn("--backend oldstyle", str(caught.exception))



class ServiceProviderInDirectoryTests(TestCase):
    """A provider without an inbox publishes itself to a directory with no client API."""

    timeout = 60

    async def start(self, service):
        service.startService()
        self.addCleanup(lambda: service.stopService() if service.running else None)
        await service.when_started()
        return service

    async def test_published_without_client_api(self):
        """
        It starts, appears in the signed document without a client address,
        and a client that takes it for its provider gets NoClientApi, not a
        crash; the topology file form keeps the absence.
        """
        from nymprov.client import ClientKeys, NoClientApi, NymClient
        from nymprov.directory.config import DirectoryConfig
        from nymprov.directory.service import DirectoryService
        from nymprov.netdoc import verify_document
        from nymprov.netdoc.signed import key_text
        from nymprov.topology import MixNode, Topology, parse_topology, topology_document

        loopback = "tcp:0:interface=127.0.0.1"
        directory = await self.start(DirectoryService(DirectoryConfig(
            data_dir=os.path.abspath(self.mktemp()), listen=loopback, database=":memory:",
            epoch_length=60.0, expiry=10.0, grace=1.0,
        ), reactor))
        url = f"http://127.0.0.1:{directory.ports[0].getHost().port}"
        service = await self.start(ProviderService(ProviderConfig(
            data_dir=os.path.abspath(self.mktemp()), mix_listen=(loopback,), client_listen=(loopback,),
            store="memory", unwrap_workers=0, stats_interval=0, backend="echo", epoch_length=60.0,
            epoch_grace=1.0, directory=url, directory_key=key_text(directory.public_key), publish_interval=0.1,
        ), reactor))
        self.assertEqual(service.client_ports, [])

        def published():
            now = reactor.seconds()
            document = directory.registry.document(directory.registry.epochs.number_at(now), now)
            return verify_document(document, directory.public_key)

        identity = service.keys.identity_public_bytes
        await wait_for(lambda: any(n.identity == identity for n in published().nodes), "the provider listed")
        [node] = [n for n in published().nodes if n.identity == identity]
        self.assertEqual((node.role, node.client_host, node.certificate_fingerprint), ("provider", None, None))
        [provider] = published().topology().providers
        self.assertIsNone(provider.client_address)
        self.assertEqual(list(parse_topology(topology_document(published().topology())).providers), [provider])
        mix = MixNode(b"\x01" * 32, KeyPair.generate().public_bytes, "127.0.0.1", 1, 1)
        client = NymClient(ClientKeys.generate(), Topology([mix], [provider]), identity, reactor=reactor)
        with self.assertRaises(NoClientApi):
            await client.start()
