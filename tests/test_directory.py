"""
nym-directory over real loopback HTTP: descriptors in, signed documents out,
typed refusals that change nothing, expiry, restart, the command and plugin.
"""

import json
import os
import stat
import subprocess
import sys

from nacl.signing import SigningKey
from twisted.application.service import IServiceMaker
from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.plugin import getPlugins
from twisted.trial.unittest import SynchronousTestCase, TestCase

from nymprov.directory.config import DirectoryConfig, DirectoryOptions
from nymprov.directory.registry import Registry
from nymprov.directory.service import DirectoryService
from nymprov.directory.store import DescriptorStore
from nymprov.metrics import Counters
from nymprov.netdoc import BadSignature, Epochs, verify_document
from nymprov.netdoc.errors import IdentityConflict, NoUsableKey, StaleTimestamp, WrongDirectory
from nymprov.netdoc.fetch import DirectoryRefused, DocumentFetcher, DocumentHolder
from nymprov.netdoc.http import make_agent, request
from nymprov.netdoc.publish import DescriptorPublisher

from tests.netdoc_support import FakeNode

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class DirectoryHTTPTests(TestCase):
    """A DirectoryService on loopback, spoken to over HTTP."""

    timeout = 30

    async def start_directory(self, **settings):
        values = dict(
            data_dir=os.path.abspath(self.mktemp()),
            listen="tcp:0:interface=127.0.0.1",
            epoch_length=3600.0,
            expiry=600.0,
        )
        values.update(settings)
        service = DirectoryService(DirectoryConfig(**values), reactor)
        service.startService()
        self.addCleanup(lambda: service.stopService() if service.running else None)
        await service.when_started()
        port = service.ports[0].getHost().port
        return service, f"http://127.0.0.1:{port}"

    def setUp(self):
        self.agent = make_agent(reactor)
        self.addCleanup(self.agent.connection_pool.closeCachedConnections)

    async def post(self, url, body):
        status, answer = await request(self.agent, b"POST", url + "/v1/descriptors", body)
        return status, json.loads(answer)

    async def get(self, url, path):
        return await request(self.agent, b"GET", url + path)

    def epoch_now(self, service):
        return service.registry.epochs.number_at(reactor.seconds())

    async def test_publish_and_document(self):
        """Published descriptors appear in the signed document with the epoch's keys."""
        service, url = await self.start_directory()
        epoch = self.epoch_now(service)
        nodes = [FakeNode("mix", 1), FakeNode("mix", 2), FakeNode("provider")]
        for node in nodes:
            status, answer = await self.post(url, node.signed(reactor.seconds(), (epoch, epoch + 1)))
            self.assertEqual((status, answer["accepted"]), (200, node.descriptor(0).identity_base58))
        status, body = await self.get(url, "/v1/document")
        self.assertEqual(status, 200)
        document = verify_document(body, service.public_key, epoch)
        self.assertEqual({n.identity for n in document.nodes}, {n.identity for n in nodes})
        topology = document.topology()
        for node in nodes:
            self.assertEqual(topology.by_identity(node.identity).sphinx_key, node.sphinx_key(epoch).public_bytes)
        status, body = await self.get(url, f"/v1/document/{epoch + 1}")
        self.assertEqual(verify_document(body, service.public_key, epoch + 1).epoch, epoch + 1)
        status, body = await self.get(url, f"/v1/document/{epoch + 2}")
        self.assertEqual((status, json.loads(body)["error"]), (404, "unknown_epoch"))
        status, body = await self.get(url, "/v1/directory")
        info = json.loads(body)
        self.assertEqual((info["nodes"], info["epoch"]), (3, epoch))

    async def assert_refused(self, service, url, body, status, reason):
        before = await self.get(url, "/v1/document")
        accepted = service.counters.get("descriptors.accepted")
        refused = service.counters.get("descriptors.refused", reason)
        answer_status, answer = await self.post(url, body)
        self.assertEqual((answer_status, answer["error"]), (status, reason), answer)
        self.assertEqual(service.counters.get("descriptors.refused", reason), refused + 1)
        # Nothing changed: the same document, nothing accepted.
        after = await self.get(url, "/v1/document")
        self.assertEqual(json.loads(after[1])["signed"], json.loads(before[1])["signed"])
        self.assertEqual(service.counters.get("descriptors.accepted"), accepted)

    async def test_typed_refusals_change_nothing(self):
        """Each bad descriptor gets its typed error and leaves the document as it was."""
        service, url = await self.start_directory(max_skew=30.0)
        epoch = self.epoch_now(service)
        now = reactor.seconds()
        a, b = FakeNode("mix", 1), FakeNode("mix", 2)
        self.assertEqual((await self.post(url, a.signed(now, (epoch,))))[0], 200)

        envelope = json.loads(b.signed(now, (epoch,)))
        envelope["signed"] = envelope["signed"].replace('"layer":2', '"layer":3')
        await self.assert_refused(service, url, json.dumps(envelope).encode(), 403, "bad_signature")
        await self.assert_refused(service, url, b.signed(now - 3600, (epoch,)), 409, "stale_timestamp")
        await self.assert_refused(service, url, b.signed(now + 3600, (epoch,)), 400, "future_timestamp")
        # B claims A's mix link: another node's identity on the network.
        await self.assert_refused(service, url, b.signed(now, (epoch,), mix_port=a.port), 409, "identity_conflict")
        await self.assert_refused(service, url, b.signed(now, (epoch + 5,)), 400, "no_usable_key")
        await self.assert_refused(service, url, b"{not json", 400, "malformed")
        await self.assert_refused(service, url, b"x" * 20000, 413, "too_large")
        # A's own descriptor again (a replay): not newer than the one held.
        replay = a.signed(now, (epoch,))
        await self.assert_refused(service, url, replay, 409, "stale_timestamp")
        self.assertEqual(service.counters.get("descriptors.refused", "stale_timestamp"), 2)

        status, body = await request(self.agent, b"GET", url + "/v1/descriptors")
        self.assertEqual((status, json.loads(body)["error"]), (405, "method_not_allowed"))
        status, body = await self.get(url, "/nothing/here")
        self.assertEqual((status, json.loads(body)["error"]), (404, "not_found"))

    async def test_operator_api(self):
        """
        With --http-listen, the operator's API serves the directory's
        counters in Prometheus' format (they move by exactly what was
        posted), its health and its description; without it nothing listens.
        """
        from prometheus_client.parser import text_string_to_metric_families

        plain, _ = await self.start_directory()
        self.assertEqual(plain.http_listener.ports, [])
        service, url = await self.start_directory(http_listen="tcp:0:interface=127.0.0.1")
        api = f"http://127.0.0.1:{service.http_listener.ports[0].getHost().port}"

        async def scrape():
            status, body = await self.get(api, "/metrics")
            self.assertEqual(status, 200)
            return {
                (sample.name, tuple(sorted(sample.labels.items()))): sample.value
                for family in text_string_to_metric_families(body.decode("utf-8"))
                for sample in family.samples
            }

        epoch = self.epoch_now(service)
        node = FakeNode("mix", 1)
        self.assertEqual((await self.post(url, node.signed(reactor.seconds(), (epoch,))))[0], 200)
        before = await scrape()
        self.assertEqual(before[("nymprov_directory_nodes", ())], 1)
        await self.post(url, b"{not json")
        await self.post(url, b"{not json")
        after = await scrape()
        refused = ("nymprov_descriptors_refused_total", (("reason", "malformed"),))
        self.assertEqual(after[refused] - before.get(refused, 0), 2)
        accepted = ("nymprov_descriptors_accepted_total", ())
        self.assertEqual(after[accepted], before[accepted])
        status, body = await self.get(api, "/health")
        self.assertEqual((status, json.loads(body)), (200, {"live": True, "ready": True}))
        status, body = await self.get(api, "/description")
        description = json.loads(body)
        self.assertEqual(description["role"], "directory")
        self.assertEqual(description["endpoints"]["directory_api"], [url[len("http://"):]])

    async def test_admission_list(self):
        """With an admission list, only the identities on it are accepted."""
        admitted, stranger = FakeNode("mix", 1), FakeNode("mix", 1)
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(f"# operators we know\n{admitted.descriptor(0).identity_base58}  # alice\n\n")
        service, url = await self.start_directory(admit=path)
        epoch, now = self.epoch_now(service), reactor.seconds()
        await self.assert_refused(service, url, stranger.signed(now, (epoch,)), 403, "not_admitted")
        self.assertEqual((await self.post(url, admitted.signed(now, (epoch,))))[0], 200)

    async def test_publisher_and_fetcher(self):
        """A node's publisher is accepted; a client's fetcher pins the key and keeps the last good document."""
        service, url = await self.start_directory()
        epoch = self.epoch_now(service)
        node = FakeNode("provider")
        counters = Counters()
        publisher = DescriptorPublisher(
            self.agent, url, lambda t: node.descriptor(t, (epoch, epoch + 1)),
            node.identity_key, reactor, 60.0, counters,
        )
        self.assertTrue(await publisher.publish())
        self.assertTrue(await publisher.publish())  # same second: timestamp still grows
        self.assertEqual(counters.get("directory.published"), 2)

        holder = DocumentHolder(service.public_key, counters)
        fetcher = DocumentFetcher(self.agent, url, holder)
        good = await fetcher.fetch()
        self.assertEqual([n.identity for n in good.nodes], [node.identity])

        # A second directory, with another key, is not the pinned one.
        _other, other_url = await self.start_directory()
        with self.assertRaises(WrongDirectory):
            await DocumentFetcher(self.agent, other_url, holder).fetch()
        with self.assertRaises(DirectoryRefused) as caught:
            await fetcher.fetch(epoch + 7)
        self.assertEqual(caught.exception.reason, "unknown_epoch")
        self.assertIs(holder.latest, good)
        self.assertEqual(counters.get("directory.document_refused", "wrong_directory"), 1)

        # A publisher whose directory refuses it counts why.
        late = FakeNode("mix", 1)
        stale = DescriptorPublisher(
            self.agent, url, lambda t: late.descriptor(t, (epoch + 9,)), late.identity_key, reactor, 60.0, counters
        )
        self.assertFalse(await stale.publish())
        self.assertEqual(counters.get("directory.publish_refused", "no_usable_key"), 1)

    async def test_restart_keeps_nodes_and_key(self):
        """A restarted directory has the same key and still lists the nodes that published."""
        data_dir = os.path.abspath(self.mktemp())
        service, url = await self.start_directory(data_dir=data_dir)
        epoch = self.epoch_now(service)
        node = FakeNode("mix", 1)
        self.assertEqual((await self.post(url, node.signed(reactor.seconds(), (epoch,))))[0], 200)
        key = service.public_key
        await service.stopService()
        key_file = os.path.join(data_dir, "directory.key")
        self.assertEqual(stat.S_IMODE(os.stat(key_file).st_mode), 0o600)
        again, url = await self.start_directory(data_dir=data_dir)
        self.assertEqual(again.public_key, key)
        status, body = await self.get(url, "/v1/document")
        self.assertEqual([n.identity for n in verify_document(body, key).nodes], [node.identity])


class ExpiryTests(SynchronousTestCase):
    """Silent nodes leave, on a controlled clock, with a real SQLite file."""

    def test_silent_node_leaves_within_expiry(self):
        clock = Clock()
        clock.advance(10_000)
        path = os.path.abspath(self.mktemp())
        registry = Registry(
            DescriptorStore(path), SigningKey.generate(), Epochs(100.0),
            expiry=30.0, grace=25.0, max_skew=5.0, admitted=None, counters=Counters(),
        )
        key = registry.public_key
        quiet, chatty = FakeNode("mix", 1), FakeNode("mix", 1)
        registry.publish(quiet.signed(clock.seconds(), (100,)), clock.seconds())
        for _ in range(4):
            registry.publish(chatty.signed(clock.seconds(), (100,)), clock.seconds())
            clock.advance(10)
        # 40 s after quiet's last word, chatty's 10 s: quiet is out of the
        # document even before the expiry chore runs.
        members = {n.identity for n in verify_document(registry.document(100, clock.seconds()), key).nodes}
        self.assertEqual(members, {chatty.identity})
        self.assertEqual(registry.expire(clock.seconds()), 1)
        self.assertEqual(len(DescriptorStore(path).load()), 1)
        # It comes back with its keys when it publishes again.
        registry.publish(quiet.signed(clock.seconds(), (100,)), clock.seconds())
        members = {n.identity for n in verify_document(registry.document(100, clock.seconds()), key).nodes}
        self.assertEqual(members, {chatty.identity, quiet.identity})

    def test_refused_publications_raise_typed(self):
        registry = Registry(
            DescriptorStore(":memory:"), SigningKey.generate(), Epochs(100.0),
            expiry=30.0, grace=25.0, max_skew=5.0, admitted=None, counters=Counters(),
        )
        node, other = FakeNode("mix", 1), FakeNode("mix", 1)
        registry.publish(node.signed(1000, (10,)), 1000.0)
        with self.assertRaises(StaleTimestamp):
            registry.publish(node.signed(1000, (10,)), 1001.0)
        with self.assertRaises(IdentityConflict):
            registry.publish(other.signed(1001, (10,), mix_port=node.port), 1001.0)
        with self.assertRaises(NoUsableKey):
            registry.publish(other.signed(1001, (3,)), 1001.0)
        with self.assertRaises(BadSignature):
            envelope = json.loads(node.signed(1002, (10,)))
            flipped = "1" if envelope["signature"][0] == "0" else "0"
            envelope["signature"] = flipped + envelope["signature"][1:]
            registry.publish(json.dumps(envelope).encode(), 1002.0)


class CommandTests(SynchronousTestCase):
    def test_init_prints_key_and_makes_private_file(self):
        """nym-directory init makes a 0600 key file and prints the key to pin."""
        data_dir = os.path.abspath(self.mktemp())
        result = subprocess.run(
            [sys.executable, "-m", "nymprov.cli.directory", "init", "--data-dir", data_dir],
            capture_output=True, text=True, timeout=60, env=dict(os.environ, PYTHONPATH=REPO_ROOT),
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        from nymprov.directory.service import load_or_create_directory_key
        from nymprov.netdoc.signed import key_text

        key = load_or_create_directory_key(os.path.join(data_dir, "directory.key"))
        self.assertIn(key_text(key.verify_key.encode()), result.stdout)
        self.assertEqual(stat.S_IMODE(os.stat(os.path.join(data_dir, "directory.key")).st_mode), 0o600)

    def test_bad_option_is_usage_error(self):
        from io import StringIO

        from nymprov.cli.directory import main

        err = StringIO()
        self.assertEqual(main(["run", "--expiry", "-1"], StringIO(), err), 2)
        self.assertIn("--expiry", err.getvalue())
        self.assertEqual(main(["run", "--epoch-length", "10", "--grace", "11"], StringIO(), StringIO()), 2)

    def test_twistd_plugin(self):
        """twistd finds nym-directory and parses the same options."""
        makers = [m for m in getPlugins(IServiceMaker) if m.tapname == "nym-directory"]
        self.assertEqual(len(makers), 1)
        self.assertIs(makers[0].options, DirectoryOptions)
        options = DirectoryOptions()
        options.parseOptions(["--epoch-length", "5", "--expiry", "12"])
        self.assertEqual(options.directory_config.grace, 1.25)
