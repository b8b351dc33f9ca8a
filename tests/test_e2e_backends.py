"""
End to end through an in-process mixnet (three mix layers and two
providers on loopback TCP): a client fetches through the ``webproxy``
backend and hands payloads to the ``forward`` backend.
"""

import os

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint

from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site

from nymprov.backends.forward import decode_status
from nymprov.backends.webproxy import ProxyError
from nymprov.client import ClientKeys, NymClient
from nymprov.provider.config import ProviderConfig
from nymprov.keys import load_or_create_keys
from nymprov.mixnode.config import MixNodeConfig
from nymprov.mixnode.service import MixNodeService
from nymprov.provider.service import ProviderService
from nymprov.tools.testnet import _free_ports
from nymprov.topology import MixNode, ProviderNode, Topology, dump_topology
from nymprov.client.services import ServiceClient

from tests.support import wait_for

BODY_SIZE = 50 * 1024


class Page(Resource):
    """A page of ``BODY_SIZE`` random bytes with a header of its own."""

    isLeaf = True

    def __init__(self):
        Resource.__init__(self)
        self.body = os.urandom(BODY_SIZE)
        self.requests = 0

    def render_GET(self, request):
        self.requests += 1
        request.setHeader(b"x-served-by", b"test page")
        request.setHeader(b"content-type", b"application/octet-stream")
        return self.body


class Sink(Resource):
    """Records every POSTed body; answers 200."""

    isLeaf = True

    def __init__(self):
        Resource.__init__(self)
        self.bodies = []

    def render_POST(self, request):
        self.bodies.append(request.content.read())
        return b"ok"


class InProcessMixnet:
    """
    Three mix layers of one node and two providers, ``home`` (the inbox,
    for the client) and ``service`` (the backend under test), as services
    in this process.
    """

    def __init__(self, test, backend, backend_option):
        self._test = test
        self.directory = test.mktemp()
        os.makedirs(self.directory)
        # All at once: ports asked for one call at a time may come back
        # twice (each call releases its ports before the next), and the
        # topology then lists an address twice.
        ports = _free_ports(7)
        mix_ports, home_ports, service_ports = ports[:3], ports[3:5], ports[5:]
        self.mix_configs = []
        mixnodes = []
        for layer, port in enumerate(mix_ports, start=1):
            data_dir = os.path.join(self.directory, f"mix-{layer}")
            keys = load_or_create_keys(data_dir)
            mixnodes.append(MixNode(keys.identity_public_bytes, keys.sphinx.public_bytes,
                                    "127.0.0.1", port, layer))
            self.mix_configs.append(MixNodeConfig(
                data_dir=data_dir, mix_listen=[f"tcp:{port}:interface=127.0.0.1"], stats_interval=0,
            ))
        providers = []
        self.provider_settings = {}
        for name, (mix_port, client_port) in (("home", home_ports), ("service", service_ports)):
            data_dir = os.path.join(self.directory, name)
            keys = load_or_create_keys(data_dir)
            providers.append(ProviderNode(keys.identity_public_bytes, keys.sphinx.public_bytes,
                                          "127.0.0.1", mix_port, "127.0.0.1", client_port,
                                          client_tls=False))
            self.provider_settings[name] = dict(
                data_dir=data_dir, mix_listen=[f"tcp:{mix_port}:interface=127.0.0.1"],
                client_listen=[f"tcp:{client_port}:interface=127.0.0.1"], client_tls=False,
                stats_interval=0,
            )
        self.provider_settings["service"].update(backend=backend, backend_option=backend_option)
        self.topology = Topology(mixnodes, providers)
        self.home_node, self.service_node = providers
        path = os.path.join(self.directory, "topology.json")
        dump_topology(self.topology, path)
        for settings in self.provider_settings.values():
            settings["topology"] = path
        self.services = {}

    async def _start(self, name, service):
        service.startService()
        self._test.addCleanup(lambda: service.running and service.stopService())
        await service.when_started()
        self.services[name] = service
        return service

    async def start(self):
        """Start every node."""
        for layer, config in enumerate(self.mix_configs, start=1):
            await self._start(f"mix-{layer}", MixNodeService(config, reactor, topology=self.topology))
        for name in self.provider_settings:
            await self.start_provider(name)

    async def start_provider(self, name):
        """(Re)start provider ``name`` on its data directory."""
        config = ProviderConfig(**self.provider_settings[name])
        return await self._start(name, ProviderService(config, reactor))

    async def stop_provider(self, name):
        """Stop provider ``name``."""
        await self.services.pop(name).stopService()

    async def client(self):
        """A started client of ``home`` and a ServiceClient for ``service``."""
        client = NymClient(ClientKeys.generate(), self.topology, self.home_node.identity,
                           reactor=reactor, mean_delay=0.002, pull_interval=0.2)
        await client.start()
        self._test.addCleanup(client.stop)
        return client, ServiceClient(client, self.service_node.identity, reactor)


async def listen_http(test, resource, port=0):
    """Serve ``resource`` on loopback; returns the listening port."""
    site = Site(resource)
    site.noisy = False
    listening = await TCP4ServerEndpoint(reactor, port, interface="127.0.0.1").listen(site)
    test.addCleanup(listening.stopListening)
    return listening


class WebProxyEndToEndTests(TestCase):
    """The web proxy behind a mixnet."""

    timeout = 120

    async def test_fetch_and_refusal(self):
        """
        A 50 KB page fetched through the mixnet arrives with its status,
        headers and body intact; a URL whose port is not on the allow-list
        gets a typed ``not_allowed`` reply and the server sees no request.
        """
        page = Page()
        listening = await listen_http(self, page)
        port = listening.getHost().port
        net = InProcessMixnet(self, "webproxy", [f"allow=http://127.0.0.1:{port}"])
        await net.start()
        _client, service = await net.client()

        response = await service.fetch(f"http://127.0.0.1:{port}/page", surbs=32, timeout=60)
        self.assertEqual(response.status, 200)
        self.assertEqual(response.header(b"x-served-by"), [b"test page"])
        self.assertFalse(response.truncated)
        self.assertEqual(response.body, page.body)
        self.assertEqual(page.requests, 1)

        with self.assertRaises(ProxyError) as caught:
            await service.fetch(f"http://127.0.0.1:{port + 1}/page", surbs=2, timeout=60)
        self.assertEqual(caught.exception.reason, "not_allowed")
        self.assertEqual(page.requests, 1)


class ForwardEndToEndTests(TestCase):
    """The forwarder behind a mixnet, its target down and up again."""

    timeout = 120

    async def test_payloads_wait_for_the_target_across_a_restart(self):
        """
        Payloads sent while the target is down are queued; they survive a
        restart of the provider and reach the target, each one, once it
        listens; a payload sent with a SURB gets the target's status back.
        """
        [port] = _free_ports(1)
        options = [f"url=http://127.0.0.1:{port}/rpc", "retry-first=0.05", "retry-max=0.3",
                   "timeout=2"]
        net = InProcessMixnet(self, "forward", options)
        await net.start()
        _client, service = await net.client()
        payloads = [b"tx-%d " % i + os.urandom(100) for i in range(5)]
        for payload in payloads:
            await service.submit(payload)
        await wait_for(lambda: net.services["service"].backend.queued_count == len(payloads),
                       "the payloads to be queued")
        self.assertGreater(net.services["service"].counters.get("packets.delivered"), 0)

        await net.stop_provider("service")
        restarted = await net.start_provider("service")
        self.assertEqual(restarted.backend.queued_count, len(payloads))

        sink = Sink()
        await listen_http(self, sink, port)
        await wait_for(lambda: restarted.backend.queued_count == 0, "the queue to empty")
        self.assertEqual(sorted(sink.bodies), sorted(payloads))

        status, phrase = decode_status(await service.request(b"with status", surbs=1, timeout=60))
        self.assertEqual((status, phrase), (200, b"OK"))
        self.assertIn(b"with status", sink.bodies)
