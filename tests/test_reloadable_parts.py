"""
The parts that SIGHUP and the admin commands change while a node runs: the
log, the topology, the invite codes, the revoked clients, the web proxy's
allow-list, and the SIGHUP handler itself.
"""

import json
import os
import signal

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.logger import Logger, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from nymprov.storage.tokens import REVOKED_TOKEN_HASH
from nymprov.backends.webproxy import WebProxyProvider
from nymprov.cli.logs import NodeLog
from nymprov.node.reload import HangupReloader, changed_fields
from nymprov.plugins import find_maker, parse_backend_options
from nymprov.provider.config import ProviderConfig
from nymprov.provider.registration import RegistrationPolicy
from nymprov.storage.limits import StoreLimits
from nymprov.storage.memory import MemoryStore
from nymprov.topology import StaticTopology, SwappableTopology


class NodeLogTests(SynchronousTestCase):
    """--logfile, --log-format and a level that can change."""

    def setUp(self):
        self.path = os.path.abspath(self.mktemp())
        self.log = Logger(namespace="nymprov.test")

    def observe(self, node_log):
        globalLogPublisher.addObserver(node_log.observer)
        self.addCleanup(globalLogPublisher.removeObserver, node_log.observer)
        if node_log.file is not None:
            self.addCleanup(node_log.file.close)

    def read(self, path=None):
        with open(path or self.path) as f:
            return f.read()

    def test_text_level_and_reopen(self):
        """
        Text lines reach the file from the level up; after the file is
        moved away and reopened, new lines go to a new file by the path.
        """
        node_log = NodeLog(None, self.path, "text", "info")
        self.observe(node_log)
        self.log.debug("hidden {n}", n=1)
        self.log.info("first {n}", n=1)
        node_log.set_level("debug")
        self.assertEqual(node_log.level, "debug")
        self.log.debug("shown {n}", n=2)
        text = self.read()
        self.assertIn("[nymprov.test#info] first 1", text)
        self.assertIn("[nymprov.test#debug] shown 2", text)
        self.assertNotIn("hidden", text)
        os.rename(self.path, self.path + ".1")
        self.assertTrue(node_log.reopen())
        self.log.warn("after {n}", n=3)
        self.assertIn("after 3", self.read())
        self.assertNotIn("after 3", self.read(self.path + ".1"))
        self.assertNotIn("first 1", self.read())

    def test_json(self):
        """--log-format json writes one JSON event a line (record separated)."""
        node_log = NodeLog(None, self.path, "json", "info")
        self.observe(node_log)
        self.log.info("hello {who}", who="operator")
        [line] = [part for part in self.read().split("\x1e") if part.strip()]
        event = json.loads(line)
        self.assertEqual((event["log_format"], event["who"]), ("hello {who}", "operator"))
        self.assertEqual(event["log_level"]["name"], "info")

    def test_no_port_and_factory_noise(self):
        """Twisted's own 'starting on', 'Port Closed' and 'Starting factory' lines are left out."""
        from twisted.internet.protocol import Factory
        from twisted.python import log as legacy

        node_log = NodeLog(None, self.path, "text", "debug")
        self.observe(node_log)
        legacy.msg("MixLinkFactory (ConnectionTracker) starting on 1789")
        legacy.msg("(TCP Port 1789 Closed)")
        legacy.msg("ConnectionTracker starting on '/run/nymprov/admin.sock'")
        factory = Factory()
        factory.doStart()
        factory.doStop()
        self.log.info("Listening on {address}", address="127.0.0.1:1789")
        text = self.read()
        self.assertIn("Listening on 127.0.0.1:1789", text)
        for noise in ("starting on", "Port 1789 Closed", "factory"):
            self.assertNotIn(noise, text)

    def test_stderr_has_nothing_to_reopen(self):
        """Without --logfile, reopening does nothing."""
        self.assertFalse(NodeLog(open(os.devnull, "w"), None).reopen())

    def test_bad_format(self):
        self.assertRaises(ValueError, NodeLog, None, None, "xml")


class TopologyTests(SynchronousTestCase):
    """A SwappableTopology answers for whichever topology it holds now."""

    def test_replace(self):
        a, b = b"a" * 32, b"b" * 32
        topology = SwappableTopology(StaticTopology([a]))
        self.assertTrue(topology.is_first_layer(a))
        topology.replace(StaticTopology([b], [a]))
        self.assertFalse(topology.is_first_layer(a))
        self.assertTrue(topology.is_known_node(a))
        self.assertTrue(topology.is_first_layer(b))


class RegistrationTests(SynchronousTestCase):
    """Invite codes can be replaced; a revoked address may not register."""

    def setUp(self):
        self.store = MemoryStore(reactor, StoreLimits())
        self.policy = RegistrationPolicy("invite", ["old"], self.store)

    def test_set_invite_codes(self):
        self.assertTrue(self.policy.allows(b"a" * 32, b"old"))
        self.policy.set_invite_codes(["new"])
        self.assertFalse(self.policy.allows(b"a" * 32, b"old"))
        self.assertTrue(self.policy.allows(b"a" * 32, b"new"))

    def test_revoked(self):
        """A revoked client may neither register with a code nor rotate its token."""
        address = b"c" * 32
        self.successResultOf(self.store.register(address, b"h" * 32, 1.0))
        self.assertTrue(self.policy.allows(address, b""))
        self.successResultOf(self.store.register(address, REVOKED_TOKEN_HASH, 2.0))
        self.assertFalse(self.policy.allows(address, b""))
        self.assertFalse(self.policy.allows(address, b"old"))
        open_policy = RegistrationPolicy("open", [], self.store)
        self.assertFalse(open_policy.allows(address, b""))
        self.successResultOf(self.store.forget(address))
        self.assertTrue(open_policy.allows(address, b""))


class WebProxyReloadTests(SynchronousTestCase):
    """The web proxy takes a new allow-list from its parsed options."""

    def test_reload_allow_list(self):
        maker = find_maker("webproxy")
        first = parse_backend_options(maker, [("allow", "https://a.example")])
        proxy = maker.make(ProviderConfig(backend="webproxy", backend_option=[("allow", "https://a.example")]),
                           first, None, StaticTopology(), reactor)
        self.assertIsInstance(proxy, WebProxyProvider)
        self.assertEqual(proxy._allowed, {("https", "a.example", 443)})
        second = parse_backend_options(maker, [("allow", "https://b.example:8443"), ("timeout", "5")])
        self.assertEqual(proxy.reload(second), [])
        self.assertEqual(proxy._allowed, {("https", "b.example", 8443)})
        self.assertEqual(proxy._timeout, 5.0)


class ChangedFieldsTests(SynchronousTestCase):
    def test_changed(self):
        old = ProviderConfig(pull_max=3)
        new = ProviderConfig(pull_max=4, invite_code=["x"])
        self.assertEqual(changed_fields(old, new), ["pull_max", "invite_code"])


class HangupTests(TestCase):
    """HangupReloader runs its reload on SIGHUP, on the reactor thread, while it runs."""

    def test_sighup(self):
        reloaded = Deferred()
        reloader = HangupReloader(lambda: reloaded.callback("done"), reactor)
        before = signal.getsignal(signal.SIGHUP)
        reloader.startService()
        os.kill(os.getpid(), signal.SIGHUP)

        def check(result):
            self.assertEqual(result, "done")
            reloader.stopService()
            self.assertIs(signal.getsignal(signal.SIGHUP), before)

        return reloaded.addCallback(check)


class ReconnectLogTests(TestCase):
    """A neighbour that cannot be reached is named in the reconnection lines."""

    async def test_names_the_peer(self):
        import socket as sockets

        from twisted.logger import formatEvent

        from nymprov.metrics import Counters
        from nymprov.node.mixsender import MixSenderPool
        from nymprov.sphinx import encode_address
        from tests.support import wait_for

        # A loopback port that nothing listens on.
        probe = sockets.socket()
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        lines = []

        def observe(event):
            lines.append(formatEvent(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        pool = MixSenderPool(reactor, Counters())
        self.assertTrue(pool.send(encode_address("127.0.0.1", port), b"\0" * 2413))
        await wait_for(lambda: any("Scheduling retry" in line for line in lines), "a retry line")
        await pool.stopService()
        [retry] = [line for line in lines if "Scheduling retry" in line][:1]
        self.assertIn(f"to connect mix node 127.0.0.1:{port} in ", retry)
        self.assertFalse([line for line in lines if "Starting factory" in line])
