"""Tests for nymprov.tools.testnet: a whole mixnet as processes on loopback."""

import io
import json
import os
import signal
import socket
import sys
import time

from nacl.signing import SigningKey

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import ProcessProtocol, Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

from nymprov.cli import provider as cli
from nymprov.client import session as provider_client
from nymprov.cli import testnet as testnet_command
from nymprov.sphinx import Destination, build_packet
from nymprov.keys import load_keys
from nymprov.tools.testnet import Testnet, TestnetError
from nymprov.net.tls import certificate_fingerprint, load_certificate
from nymprov.topology import load_topology

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Bound on a whole process test: five Python processes start on a busy
#: machine in a few seconds.
PROCESS_TEST_TIMEOUT = 120  # seconds


def process_gone(pid):
    """Whether no process ``pid`` exists any more."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def accepts(port):
    """Whether something accepts a TCP connection on 127.0.0.1:``port``."""
    try:
        protocol = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), Protocol())
    except ConnectionRefusedError:
        return False
    protocol.transport.abortConnection()
    return True


class LayoutTests(SynchronousTestCase):
    """Building a testnet writes keys, topology and client configs; no process runs."""

    def test_files(self):
        """The topology names every node with its real keys; each provider gets a client config."""
        net = Testnet(self.mktemp(), layers=2, per_layer=2, providers=3, base_port=20000,
                      mean_delay_ms=7)
        self.assertFalse(net.running)
        topology = load_topology(net.topology_path)
        self.assertEqual({layer: len(nodes) for layer, nodes in topology.layers.items()},
                         {1: 2, 2: 2})
        self.assertEqual(len(topology.providers), 3)
        ports = [n.port for n in topology.nodes] + [p.client_port for p in topology.providers]
        self.assertEqual(sorted(ports), list(range(20000, 20010)))
        for node in topology.nodes:
            data_dir = net.nodes[_name_of(net, node)].data_dir
            keys = load_keys(data_dir)
            self.assertEqual(node.identity, keys.identity_public_bytes)
            self.assertEqual(node.sphinx_key, keys.sphinx.public_bytes)
        for index, provider in enumerate(topology.providers, start=1):
            certificate = load_certificate(net.nodes[f"provider-{index}"].data_dir)
            self.assertEqual(provider.certificate_fingerprint.hex(),
                             certificate_fingerprint(certificate).hex())
            with open(net.client_config_paths[index - 1]) as f:
                text = f.read()
            self.assertIn(provider.identity_base58, text)
            self.assertIn("mean_delay_ms = 7.0", text)

    def test_bad_shape(self):
        """Zero or too many layers, or no provider, are refused before anything is made."""
        for shape in (dict(layers=0), dict(layers=5), dict(providers=0), dict(per_layer=0)):
            directory = self.mktemp()
            self.assertRaises(ValueError, Testnet, directory, **shape)
            self.assertFalse(os.path.exists(directory))

    def test_free_ports_distinct(self):
        """Without a base port, every node gets its own free port."""
        net = Testnet(self.mktemp(), layers=3, per_layer=1, providers=2)
        ports = [p for node in net.nodes.values() for p in node.ports]
        self.assertEqual(len(set(ports)), 7)

    def test_usage_error(self):
        """A bad option is a usage error, exit 2, before anything is made."""
        stderr = io.StringIO()
        self.assertEqual(testnet_command.main(["--layers", "many"], io.StringIO(), stderr), 2)
        self.assertIn("--layers", stderr.getvalue())


class ProviderCommandTests(SynchronousTestCase):
    """nym-provider testnet and nym-provider help testnet."""

    def test_dispatch(self):
        """nym-provider testnet runs the testnet command (a bad option: exit 2)."""
        stderr = io.StringIO()
        self.assertEqual(cli.main(["testnet", "--providers", "x"], io.StringIO(), stderr), 2)
        self.assertIn("--providers", stderr.getvalue())

    def test_help(self):
        """help testnet lists its options; the command list names it."""
        stdout = io.StringIO()
        self.assertEqual(cli.main(["help", "testnet"], stdout, io.StringIO()), 0)
        for option in ("--layers", "--per-layer", "--providers", "--dir", "--mean-delay-ms",
                       "--base-port"):
            self.assertIn(option, stdout.getvalue())
        stdout = io.StringIO()
        cli.main(["help"], stdout, io.StringIO())
        self.assertIn("  testnet ", stdout.getvalue())


def _name_of(net, topology_node):
    for name, node in net.nodes.items():
        if node.mix_port == topology_node.port:
            return name
    raise KeyError(topology_node)


class ProcessTests(TestCase):
    """A real testnet of separate processes on loopback."""

    timeout = PROCESS_TEST_TIMEOUT

    async def test_start_stop_one_node_and_all(self):
        """
        3 layers of 1 mix and 2 providers start and listen; one mix can be
        stopped and started again; stopping the testnet leaves no process.
        """
        net = Testnet(self.mktemp(), layers=3, per_layer=1, providers=2)
        self.addCleanup(net.stop)
        await net.start()
        pids = [node.pid for node in net.nodes.values()]
        self.assertEqual(len(set(pids)), 5)
        for node in net.nodes.values():
            for port in node.ports:
                self.assertTrue(await accepts(port), f"{node.name} on {port}")
        with open(os.path.join(net.directory, "testnet.json")) as f:
            self.assertEqual(sorted(n["pid"] for n in json.load(f)["nodes"]), sorted(pids))
        await self.check_packet_crosses(net)

        middle = net.nodes["mix-2-1"]
        old_pid = middle.pid
        await net.stop_node("mix-2-1")
        self.assertTrue(process_gone(old_pid))
        self.assertFalse(await accepts(middle.mix_port))
        self.assertTrue(net.running)
        await net.start_node("mix-2-1")
        self.assertNotEqual(middle.pid, old_pid)
        self.assertTrue(await accepts(middle.mix_port))

        pids = [node.pid for node in net.nodes.values()]
        await net.stop()
        self.assertFalse(net.running)
        for pid in pids:
            self.assertTrue(process_gone(pid), pid)
        self.assertEqual({n.name: n.exit_status for n in net.nodes.values()},
                         {n.name: 0 for n in net.nodes.values()})
        with open(middle.log_path) as f:
            self.assertIn("nym-mixnode stopped", f.read())


    async def test_start_fails_cleanly(self):
        """
        A node that cannot listen (its port is taken) fails start with
        TestnetError naming it, and no node is left running.
        """
        taken = socket.socket()
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        self.addCleanup(taken.close)
        net = Testnet(self.mktemp(), layers=1, per_layer=1, providers=1,
                      base_port=taken.getsockname()[1])
        self.addCleanup(net.stop)
        with self.assertRaises(TestnetError) as caught:
            await net.start()
        self.assertIn("mix-1-1", str(caught.exception))
        self.assertFalse(net.running)
        with open(os.path.join(net.directory, "testnet.json")) as f:
            for node in json.load(f)["nodes"]:
                self.assertTrue(node["pid"] is None or process_gone(node["pid"]), node)

    async def check_packet_crosses(self, net):
        """
        A packet handed to provider-1 for the first layer crosses the three
        mixes to provider-2, where its recipient pulls it over pinned TLS.
        """
        topology = load_topology(net.topology_path)
        sender_at, recipient_at = topology.providers
        recipient_key, sender_key = SigningKey.generate(), SigningKey.generate()
        inbox = await self.session(recipient_at)
        await inbox.register(recipient_key)
        outbox = await self.session(sender_at)
        await outbox.register(sender_key)
        route = [layer[0].route_node for layer in topology.layers.values()]
        route.append(recipient_at.route_node)
        recipient = bytes(recipient_key.verify_key)
        packet = build_packet(b"across the testnet", route, [int(1e7)] * 4,
                              Destination(recipient, b"\0" * 16))
        await outbox.send(route[0].address, packet)
        deadline = time.monotonic() + 30
        while True:
            batch = await inbox.pull(8)
            if batch.messages or time.monotonic() > deadline:
                break
            await deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(batch.messages, (b"across the testnet",))

    async def session(self, provider):
        """A client-API session with ``provider``, pinning its certificate."""
        session = await provider_client.connect(
            reactor, provider.client_host, provider.client_port, provider.certificate_fingerprint
        )
        self.addCleanup(session.close)
        return session


class _Collector(ProcessProtocol):
    """Collects a child's output and fires ``ended`` with its exit code."""

    def __init__(self):
        self.output = b""
        self.ready = Deferred()
        self.ended = Deferred()

    def outReceived(self, data):
        self.output += data
        if b"testnet ready" in self.output and not self.ready.called:
            self.ready.callback(None)

    def errReceived(self, data):
        self.output += data

    def processEnded(self, reason):
        if not self.ready.called:
            self.ready.errback(AssertionError(self.output.decode(errors="replace")))
        self.ended.callback(reason.value.exitCode)


class CommandTests(TestCase):
    """The testnet command runs until SIGINT, then stops its nodes and exits 0."""

    timeout = PROCESS_TEST_TIMEOUT

    async def test_sigint(self):
        """SIGINT stops a one-mix, one-provider testnet (and its directory) cleanly: exit 0, no child left."""
        directory = os.path.abspath(self.mktemp())
        collector = _Collector()
        env = dict(os.environ, PYTHONPATH=REPO_ROOT)
        process = reactor.spawnProcess(
            collector, sys.executable,
            [sys.executable, "-m", "nymprov.cli.testnet", "--dir", directory, "--layers", "1",
             "--providers", "1"],
            env=env,
        )
        self.addCleanup(lambda: collector.ended.called or process.signalProcess("KILL"))
        await collector.ready
        with open(os.path.join(directory, "testnet.json")) as f:
            nodes = json.load(f)["nodes"]
        pids = [node["pid"] for node in nodes]
        # The mix, the provider and (epochs being on by default) the directory.
        self.assertEqual(sorted(node["kind"] for node in nodes), ["directory", "mix", "provider"])
        os.kill(process.pid, signal.SIGINT)
        code = await collector.ended
        self.assertEqual(code, 0, collector.output.decode(errors="replace"))
        self.assertIn(b"testnet stopped", collector.output)
        for pid in pids:
            self.assertTrue(process_gone(pid), pid)
