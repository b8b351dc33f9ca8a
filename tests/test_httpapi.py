"""
The operator's HTTP API of a running provider and mix node, read with a real
HTTP client over loopback: /metrics (parsed with prometheus_client's own
parser), /health and /description.
"""

import hashlib
import json

from nacl.signing import SigningKey
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, readBody

from nymprov import __version__
from nymprov.httpapi.service import HttpApiService
from nymprov.metrics import Counters, NodeMetrics
from nymprov.mixnode.status import MixNodeStatus
from nymprov.provider.status import ProviderStatus
from nymprov.sphinx import Destination, build_packet
from nymprov.topology import Topology
from nymprov.wire import clientapi as api
from nymprov.wire.frames import encode_frame

from tests.support import wait_for
from tests.test_integration import ProviderFixture
from tests.test_mixnode import LoopbackTests as MixFixture

LOOPBACK = "tcp:0:interface=127.0.0.1"


async def get(api_service, path):
    """GET ``path`` from the API; :returns: ``(status code, headers, body bytes)``."""
    address = api_service.ports[0].getHost()
    response = await Agent(reactor).request(b"GET", f"http://127.0.0.1:{address.port}{path}".encode())
    body = await readBody(response)
    return response.code, response.headers, body


async def scrape(api_service):
    """:returns: ``{(sample name, frozenset of label pairs): value}`` from /metrics."""
    code, headers, body = await get(api_service, "/metrics")
    assert code == 200, body
    assert headers.getRawHeaders(b"content-type")[0].startswith(b"text/plain; version=0.0.4"), headers
    samples = {}
    for family in text_string_to_metric_families(body.decode("utf-8")):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def counter_deltas(before, after):
    """:returns: the nymprov counters that moved, ``{(name, labels): increase}``."""
    moved = {}
    for key, value in after.items():
        name = key[0]
        if name.startswith("nymprov_") and name.endswith("_total") and value != before.get(key, 0):
            moved[key] = value - before.get(key, 0)
    return moved


def series(name, **labels):
    return (name, frozenset(labels.items()))


class ApiFixture:
    async def serve(self, status):
        service = HttpApiService(status, [LOOPBACK], reactor)
        service.startService()
        self.addCleanup(service.stopService)
        await service.when_listening()
        return service


class ProviderApiTests(ProviderFixture, ApiFixture, TestCase):
    """A provider's API while it runs, stops, and loses its store."""

    async def start(self):
        provider = await self.start_provider()
        http = await self.serve(ProviderStatus(provider))
        return provider, http

    async def test_counters_move_by_what_was_sent(self):
        """
        Three good packets, a replay, a broken MAC, an unknown frame tag and a
        client packet of a bad size move exactly the labelled counters they
        should, by exactly those amounts; the store gauges follow.
        """
        provider, http = await self.start()
        _, address, _, session = await self.register(provider)
        before = await scrape(http)
        self.assertEqual(before[series("nymprov_inbox_clients")], 1)
        self.assertEqual(before[series("nymprov_inbox_messages")], 0)

        link = await self.mix_link(provider)
        good = [self.packet_for(provider, address, b"good %d" % i) for i in range(3)]
        broken = bytearray(self.packet_for(provider, address, b"broken"))
        broken[40] ^= 0x80
        link.transport.write(b"".join(encode_frame(p) for p in good + [good[0], bytes(broken)]))
        counters = provider.counters
        await wait_for(lambda: counters.get("packets.received", "mix") == 5, "five packets")
        await wait_for(lambda: counters.get("packets.delivered") == 3, "three deliveries")
        bad_tag = await self.mix_link(provider)
        bad_tag.transport.write(bytes([7, 9, 0]) + b"\x00" * 100)
        await bad_tag.closed
        # A client packet for a first hop that is no first-layer mix.
        refused = await self.assertFailure(session.send(b"\x01" * 32, b"\x00" * 2413), api.RemoteError)
        self.assertEqual(refused.code, api.ErrorCode.UNKNOWN_FIRST_HOP)

        after = await scrape(http)
        self.assertEqual(counter_deltas(before, after), {
            series("nymprov_connections_total", listener="mix_link"): 2,
            series("nymprov_packets_received_total", source="mix"): 5,
            series("nymprov_packets_received_total", source="client"): 1,
            series("nymprov_packets_delivered_total"): 3,
            series("nymprov_packets_dropped_total", reason="replay"): 1,
            series("nymprov_packets_dropped_total", reason="bad_mac"): 1,
            series("nymprov_packets_dropped_total", reason="unknown_first_hop"): 1,
            series("nymprov_mix_link_frame_errors_total", reason="unknown_size_tag"): 1,
            series("nymprov_client_api_requests_total", request="send"): 1,
            series("nymprov_client_api_errors_total", reason="unknown_first_hop"): 1,
        })
        self.assertEqual(after[series("nymprov_inbox_messages")], 3)
        self.assertEqual(after[series("nymprov_replay_tags")], 3)
        self.assertEqual(after[series("nymprov_ready")], 1)
        self.assertEqual(after[series("nymprov_build_info", version=__version__, role="provider")], 1)
        self.assertIn(series("process_resident_memory_bytes"), after)

    async def test_rate_limits_and_refusals_by_listener(self):
        """Rate-limited registrations and refused connections are counted by listener."""
        provider = await self.start_provider(register_rate=1, max_connections=1)
        http = await self.serve(ProviderStatus(provider))
        before = await scrape(http)
        await self.register(provider)
        second = await self.session(provider)  # over the connection limit: refused
        error = await self.assertFailure(ensureDeferred(second.register(SigningKey.generate())),
                                         api.RemoteError)
        self.assertEqual(error.code, api.ErrorCode.BUSY)
        after = await scrape(http)
        moved = counter_deltas(before, after)
        self.assertEqual(moved[series("nymprov_connections_refused_total",
                                      listener="client_api", reason="too_many_connections")], 1)
        self.assertEqual(moved[series("nymprov_connections_total", listener="client_api")], 1)

    async def test_health_and_description(self):
        """/health is 200 and ready; /description says what the node is."""
        provider, http = await self.start()
        code, headers, body = await get(http, "/health")
        self.assertEqual((code, json.loads(body)), (200, {"live": True, "ready": True}))
        self.assertEqual(headers.getRawHeaders(b"content-type"), [b"application/json"])
        code, _, body = await get(http, "/health/live")
        self.assertEqual((code, json.loads(body)), (200, {"live": True}))
        code, _, body = await get(http, "/description")
        self.assertEqual(code, 200)
        description = json.loads(body)
        mix = provider.mix_ports[0].getHost()
        client = provider.client_ports[0].getHost()
        own = http.ports[0].getHost()
        self.assertEqual(description["version"], __version__)
        self.assertEqual(description["role"], "provider")
        self.assertEqual(description["identity_key"], provider.keys.identity_base58)
        self.assertEqual(description["sphinx_keys"], {"none": provider.keys.sphinx.public_base58})
        self.assertEqual(description["backend"], "inbox")
        # The largest message its inbox keeps: what a sender must stay under.
        self.assertEqual(description["max_message_bytes"], 2048)
        self.assertEqual(description["endpoints"], {
            "mix_link": [f"127.0.0.1:{mix.port}"], "client_api": [f"127.0.0.1:{client.port}"],
            "http": [f"127.0.0.1:{own.port}"]})
        self.assertIn({"name": "regular", "tag": 1, "packet_bytes": 2413, "plaintext_bytes": 2048},
                      description["packet_sizes"])
        self.assertEqual(len(description["client_tls_fingerprint"]), 64)
        code, _, body = await get(http, "/")
        self.assertIn("/metrics", json.loads(body)["routes"])
        code, _, _ = await get(http, "/nothing-here")
        self.assertEqual(code, 404)

    async def test_epoch_keys(self):
        """With epochs, the usable Sphinx keys are described and served by epoch."""
        provider = await self.start_provider(epoch_length=3600.0)
        http = await self.serve(ProviderStatus(provider))
        ring = provider.rotation.ring
        current = ring.epochs.number_at(reactor.seconds())
        code, _, body = await get(http, "/description")
        keys = json.loads(body)["sphinx_keys"]
        self.assertIn(str(current), keys)
        self.assertEqual(keys[str(current)], ring.key_of(current).public_base58)
        samples = await scrape(http)
        self.assertEqual(samples[series("nymprov_epoch")], current)
        self.assertEqual(samples[series("nymprov_sphinx_keys", epoch=str(current),
                                        public_key=keys[str(current)])], 1)

    async def test_not_ready_while_store_closed(self):
        """With its store closed, the provider is live but not ready, and says why."""
        provider, http = await self.start()
        await provider.store.close()
        code, _, body = await get(http, "/health")
        self.assertEqual((code, json.loads(body)),
                         (503, {"live": True, "ready": False, "reason": "store is closed"}))
        samples = await scrape(http)
        self.assertEqual(samples[series("nymprov_ready")], 0)
        self.assertNotIn(series("nymprov_inbox_messages"), samples)

    async def test_not_ready_while_stopping(self):
        """From the moment the node starts stopping, /health answers 503 'node is stopping'."""
        provider, http = await self.start()
        stopping = provider.stopService()
        code, _, body = await get(http, "/health")
        self.assertEqual((code, json.loads(body)),
                         (503, {"live": True, "ready": False, "reason": "node is stopping"}))
        await stopping
        code, _, body = await get(http, "/health")
        self.assertEqual((code, json.loads(body)["reason"]), (503, "node is stopping"))


class MixNodeApiTests(MixFixture, ApiFixture):
    """A mix node's API: its counters move by what it was sent."""

    async def test_counters_move_by_what_was_sent(self):
        """
        Two good forward hops, a replay and a final hop at the mix move the
        mix node's labelled counters by exactly those amounts.
        """
        provider = await self.start_provider()
        mix = await self.start_mix(Topology(providers=[self.provider_node(provider)]))
        http = await self.serve(MixNodeStatus(mix))
        before = await scrape(http)
        recipient = bytes(SigningKey.generate().verify_key)
        await provider.store.register(recipient, hashlib.sha256(b"token").digest(), reactor.seconds())
        route = [self.mix_route_node(mix), self.provider_node(provider).route_node]
        good = [build_packet(b"good %d" % i, route, [0, 0], Destination(recipient, b"\0" * 16))
                for i in range(2)]
        final = build_packet(b"x", [self.mix_route_node(mix)], [0], Destination(recipient, b"\0" * 16))
        sink = await self.send(mix, *good, good[1], final)
        await wait_for(lambda: mix.counters.get("packets.received", "mix") == 4, "four packets")
        await wait_for(lambda: mix.counters.get("packets.forwarded") == 2, "two forwarded")
        await wait_for(lambda: provider.counters.get("packets.delivered") == 2, "two deliveries")
        after = await scrape(http)
        self.assertEqual(counter_deltas(before, after), {
            series("nymprov_connections_total", listener="mix_link"): 1,
            series("nymprov_packets_received_total", source="mix"): 4,
            series("nymprov_packets_scheduled_total"): 2,
            series("nymprov_packets_forwarded_total"): 2,
            series("nymprov_packets_dropped_total", reason="replay"): 1,
            series("nymprov_packets_dropped_total", reason="route_refused"): 1,
            series("nymprov_mix_sender_connections_total"): 1,
        })
        provider_address = provider.mix_ports[0].getHost()
        neighbour = f"127.0.0.1:{provider_address.port}"
        self.assertEqual(after[series("nymprov_neighbour_queue_depth", neighbour=neighbour)], 0)
        self.assertEqual(after[series("nymprov_neighbour_connected", neighbour=neighbour)], 1)
        self.assertEqual(after[series("nymprov_delayed_packets")], 0)
        # The final hop is refused before its tag is looked at.
        self.assertEqual(after[series("nymprov_replay_tags")], 2)
        self.assertEqual(after[series("nymprov_build_info", version=__version__, role="mix")], 1)
        code, _, body = await get(http, "/description")
        description = json.loads(body)
        self.assertEqual((description["role"], description["sphinx_keys"]),
                         ("mix", {"none": mix.keys.sphinx.public_base58}))
        self.assertNotIn("client_api", description["endpoints"])
        await self.hang_up(sink)

    async def test_not_ready_while_stopping_or_cache_closed(self):
        """A mix node is not ready once it stops, nor with its replay cache closed."""
        mix = await self.start_mix(Topology())
        http = await self.serve(MixNodeStatus(mix))
        code, _, body = await get(http, "/health")
        self.assertEqual(code, 200, body)
        await mix.replay_cache.close()
        code, _, body = await get(http, "/health")
        self.assertEqual((code, json.loads(body)["reason"]), (503, "store is closed"))
        await mix.stopService()
        code, _, body = await get(http, "/health")
        self.assertEqual((code, json.loads(body)["reason"]), (503, "node is stopping"))


class ExpositionTests(SynchronousTestCase):
    """NodeMetrics serves labelled Counters as Prometheus families."""

    def parse(self, metrics):
        _, body = metrics.exposition()
        return {family.name: family for family in text_string_to_metric_families(body.decode())}

    def test_labels_and_unknown_counters(self):
        """
        A reason becomes its family's label, extra labels join it, and a
        counter no table names is still served under its own name.
        """
        counters = Counters()
        counters.incr("packets.dropped", "replay", 2)
        counters.incr("packets.dropped", "bad_mac")
        counters.incr("backend.webproxy.failed", "timeout")
        counters.incr("something.new", amount=4)
        counters.incr("something.new", "odd")
        counters.incr("queued", "full", 3, listener="x")
        families = self.parse(NodeMetrics(counters))
        dropped = {tuple(s.labels.items()): s.value for s in families["nymprov_packets_dropped"].samples}
        self.assertEqual(dropped, {(("reason", "replay"),): 2, (("reason", "bad_mac"),): 1})
        [failure] = families["nymprov_backend_failures"].samples
        self.assertEqual(failure.labels, {"backend": "webproxy", "reason": "timeout"})
        new = {tuple(s.labels.items()): s.value for s in families["nymprov_something_new"].samples}
        self.assertEqual(new, {(("reason", ""),): 4, (("reason", "odd"),): 1})
        [queued] = families["nymprov_queued"].samples
        self.assertEqual((queued.labels, queued.value), ({"listener": "x", "reason": "full"}, 3))
        self.assertEqual(counters.snapshot()["queued.full[listener=x]"], 3)

    def test_gauges(self):
        """Gauges are read at each scrape; labelled ones give one sample per key."""
        depth = {("a:1",): 5}
        metrics = NodeMetrics(Counters())
        metrics.add_gauge("depth", "queue depth", lambda: dict(depth), ("neighbour",))
        metrics.add_gauge("plain", "a number", lambda: 7)
        families = self.parse(metrics)
        self.assertEqual([(s.labels, s.value) for s in families["nymprov_depth"].samples],
                         [({"neighbour": "a:1"}, 5)])
        depth[("a:1",)] = 6
        families = self.parse(metrics)
        self.assertEqual(families["nymprov_depth"].samples[0].value, 6)
        self.assertEqual(families["nymprov_plain"].samples[0].value, 7)
