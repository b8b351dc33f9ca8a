"""Tests for nymprov.mixnode: the mix node service, its command and plugin."""

import hashlib
import io
import os

from nacl.signing import SigningKey
from twisted.application.service import IServiceMaker
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol

from twisted.plugin import getPlugins
from twisted.python import usage
from twisted.scripts.twistd import ServerOptions
from twisted.trial.unittest import SynchronousTestCase, TestCase

from nymprov import __version__
from nymprov.cli import mixnode
from nymprov.mixnode import tap as mixnode_tap
from nymprov.provider.config import InvalidSetting, ProviderConfig
from nymprov.keys import load_keys
from nymprov.mixnode.config import MixNodeConfig, MixNodeOptions
from nymprov.mixnode.service import MixNodeService
from nymprov.provider.service import ProviderService
from nymprov.sphinx import Destination, Node, build_packet
from nymprov.topology import ProviderNode, Topology, dump_topology
from nymprov.wire.frames import encode_frame

from tests.support import wait_for

LOOPBACK = "tcp:0:interface=127.0.0.1"


def run_main(argv):
    """Run ``mixnode.main(argv)``; return ``(exit code, stdout, stderr)``."""
    stdout, stderr = io.StringIO(), io.StringIO()
    code = mixnode.main(argv, stdout=stdout, stderr=stderr)
    return code, stdout.getvalue(), stderr.getvalue()


class ConfigTests(SynchronousTestCase):
    """MixNodeConfig and its options check every value."""

    def test_defaults(self):
        """Defaults listen on loopback and keep the replay file in the data dir."""
        config = MixNodeConfig()
        self.assertEqual(config.mix_listen, ("tcp:1790:interface=127.0.0.1",))
        self.assertIsNone(config.topology)
        self.assertEqual(config.replay_db_path, os.path.join(config.data_dir, "replay.sqlite"))

    def test_bad_value_names_option(self):
        """A bad value raises InvalidSetting naming the option."""
        with self.assertRaises(InvalidSetting) as caught:
            MixNodeConfig(max_delay=-1)
        self.assertTrue(str(caught.exception).startswith("--max-delay: "))
        self.assertRaises(InvalidSetting, MixNodeConfig, mix_listen=["nonsense:1"])

    def test_options(self):
        """Command-line values become the config; --mix-listen repeats."""
        options = MixNodeOptions()
        options.parseOptions(["--topology", "t.json", "--mix-listen", "tcp:1", "--mix-listen",
                              "tcp:2", "--max-delay", "2.5", "--mix-queue", "7"])
        config = options.mixnode_config
        self.assertEqual(config.mix_listen, ("tcp:1", "tcp:2"))
        self.assertEqual(config.max_delay, 2.5)
        self.assertEqual(config.mix_queue, 7)
        self.assertEqual(config.topology, os.path.abspath("t.json"))

    def test_topology_required_to_run(self):
        """Running without --topology is a usage error naming it."""
        with self.assertRaises(usage.UsageError) as caught:
            MixNodeOptions().parseOptions([])
        self.assertIn("--topology", str(caught.exception))

    def test_config_file(self):
        """--config reads a TOML file of long option names; the command line beats it."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write('topology = "t.json"\nmix-listen = ["tcp:1"]\nmax-delay = 2.5\nmix-queue = 7\n')
        options = MixNodeOptions()
        options.parseOptions(["--config", path, "--mix-queue", "9"])
        config = options.mixnode_config
        self.assertEqual((config.mix_listen, config.max_delay, config.mix_queue),
                         (("tcp:1",), 2.5, 9))
        self.assertEqual(config.topology, os.path.abspath("t.json"))

    def test_config_file_errors(self):
        """A bad key or value in the file is one line naming the option and the file."""
        path = self.mktemp()
        for text, expected in (('max_delay = 1\n', "did you mean 'max-delay'?"),
                               ('max-delay = -1\n', f"--max-delay: must be at least 0, got -1 (in {path})"),
                               ('max-delay = [\n', "is not valid TOML")):
            with open(path, "w") as f:
                f.write(text)
            code, out, err = run_main(["run", "--config", path, "--topology", "t"])
            self.assertEqual(code, 2)
            self.assertEqual(err.count("\n"), 1, err)
            self.assertIn(expected, err)

    def test_not_a_number(self):
        """A number option given text is a usage error naming the option."""
        with self.assertRaises(usage.UsageError) as caught:
            MixNodeOptions().parseOptions(["--topology", "t", "--mix-queue", "many"])
        self.assertIn("--mix-queue", str(caught.exception))


class CommandTests(SynchronousTestCase):
    """The nym-mixnode command: banner, help, version, init, usage errors."""

    def test_no_arguments(self):
        """No arguments: the command list, exit 0."""
        code, out, _ = run_main([])
        self.assertEqual(code, 0)
        for command in ("run", "init", "help"):
            self.assertIn(f"    {command} ", out)

    def test_version(self):
        """--version prints the version."""
        self.assertEqual(run_main(["--version"]), (0, f"nymprov {__version__}\n", ""))

    def test_help_run(self):
        """help run lists the run options."""
        code, out, _ = run_main(["help", "run"])
        self.assertEqual(code, 0)
        for option in ("--data-dir", "--mix-listen", "--topology", "--max-delay", "--log-level"):
            self.assertIn(option, out)

    def test_unknown_command(self):
        """An unknown command is a usage error, exit 2."""
        code, _, err = run_main(["fly"])
        self.assertEqual(code, 2)
        self.assertIn("unknown command: fly", err)

    def test_run_without_topology(self):
        """run without --topology exits 2 before starting anything."""
        code, _, err = run_main(["run", "--data-dir", self.mktemp()])
        self.assertEqual(code, 2)
        self.assertIn("--topology", err)

    def test_init(self):
        """init creates private keys and prints their public halves."""
        data_dir = self.mktemp()
        code, out, _ = run_main(["init", "--data-dir", data_dir])
        self.assertEqual(code, 0)
        keys = load_keys(data_dir)
        self.assertIn(keys.identity_base58, out)
        self.assertIn(keys.sphinx.public_base58, out)
        self.assertEqual(os.stat(data_dir).st_mode & 0o777, 0o700)

    def test_console_script(self):
        """setup.cfg declares the nym-mixnode console script."""
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        with open(os.path.join(root, "setup.cfg")) as f:
            self.assertIn("nym-mixnode = nymprov.cli.mixnode:main", f.read())


class PluginTests(SynchronousTestCase):
    """twistd nym-mixnode finds the plugin and parses the same options."""

    def test_found(self):
        """getPlugins lists nym-mixnode, built by nymprov.mixnode.tap."""
        makers = [m for m in getPlugins(IServiceMaker) if m.tapname == "nym-mixnode"]
        self.assertEqual(len(makers), 1)
        self.assertIs(makers[0].options, MixNodeOptions)
        self.assertIs(makers[0].makeService, mixnode_tap.makeService)

    def test_twistd_parses_options(self):
        """twistd nym-mixnode checks the options like the command does."""
        options = ServerOptions()
        options.parseOptions(["nym-mixnode", "--topology", "t.json", "--max-delay", "3"])
        self.assertEqual(options.subOptions.mixnode_config.max_delay, 3.0)
        with self.assertRaises(usage.UsageError):
            ServerOptions().parseOptions(["nym-mixnode", "--topology", "t", "--idle-timeout", "0"])

    def test_make_service(self):
        """makeService builds a MixNodeService from a topology file."""
        path = self.mktemp()
        os.makedirs(os.path.dirname(path), exist_ok=True)
        dump_topology(Topology(), path)
        options = MixNodeOptions()
        options.parseOptions(["--topology", path, "--data-dir", self.mktemp()])
        service = mixnode_tap.makeService(options, reactor)
        self.assertIsInstance(service.node, MixNodeService)
        self.assertEqual(service.node.topology.nodes, ())


class Sink(Protocol):
    """A peer that sends frames and notices when it is hung up on."""

    def __init__(self):
        self.closed = Deferred()

    def connectionLost(self, reason):
        self.closed.callback(None)


class LoopbackTests(TestCase):
    """A real mix node in front of a real provider, over loopback TCP."""

    async def start_provider(self):
        config = ProviderConfig(
            data_dir=self.mktemp(), mix_listen=[LOOPBACK], client_listen=[LOOPBACK],
            stats_interval=0,
        )
        provider = ProviderService(config, reactor)
        provider.startService()
        self.addCleanup(lambda: provider.running and provider.stopService())
        await provider.when_started()
        return provider

    async def start_mix(self, topology, data_dir=None, topology_path=None, **settings):
        config = MixNodeConfig(
            data_dir=data_dir or self.mktemp(), mix_listen=[LOOPBACK], stats_interval=0,
            topology=topology_path, **settings
        )
        mix = MixNodeService(config, reactor, topology=topology)
        mix.startService()
        self.addCleanup(lambda: mix.running and mix.stopService())
        await mix.when_started()
        return mix

    def provider_node(self, provider):
        address = provider.mix_ports[0].getHost()
        client = provider.client_ports[0].getHost()
        return ProviderNode(provider.keys.identity_public_bytes, provider.keys.sphinx.public_bytes,
                            address.host, address.port, client.host, client.port)

    def mix_route_node(self, mix):
        [address] = mix.node.own_addresses
        return Node(address, mix.keys.sphinx.public_bytes)

    async def send(self, mix, *packets):
        address = mix.mix_ports[0].getHost()
        sink = Sink()
        await connectProtocol(TCP4ClientEndpoint(reactor, address.host, address.port), sink)
        sink.transport.write(b"".join(encode_frame(p) for p in packets))
        return sink

    async def hang_up(self, sink):
        sink.transport.loseConnection()
        await sink.closed

    async def test_two_hops_with_delay(self):
        """
        A packet routed mix -> provider is held at the mix for its delay, then
        reaches the provider and lands in the recipient's inbox.
        """
        provider = await self.start_provider()
        mix = await self.start_mix(Topology(providers=[self.provider_node(provider)]))
        recipient = bytes(SigningKey.generate().verify_key)
        await provider.store.register(recipient, hashlib.sha256(b"token").digest(), reactor.seconds())
        delay = 0.3  # seconds
        route = [self.mix_route_node(mix), self.provider_node(provider).route_node]
        packet = build_packet(b"through the mix", route, [int(delay * 1e9), 0],
                              Destination(recipient, b"\0" * 16))
        sent = reactor.seconds()
        sink = await self.send(mix, packet)
        await wait_for(lambda: provider.counters.get("packets.delivered") == 1, "delivery")
        arrived = reactor.seconds()
        self.assertGreaterEqual(arrived - sent, delay)
        self.assertEqual(mix.counters.get("packets.forwarded"), 1)
        lease_id, messages = await provider.store.lease(recipient, 10, reactor.seconds(), 60)
        self.assertEqual([body for _, body in messages], [b"through the mix"])
        await self.hang_up(sink)

    async def test_refuses_final_hop_and_unknown_next_hop(self):
        """A final hop at a mix, and a hop to a node not in the topology, are dropped."""
        provider = await self.start_provider()
        mix = await self.start_mix(Topology())  # knows no one
        own = self.mix_route_node(mix)
        final = build_packet(b"x", [own], [0], Destination(b"\1" * 32, b"\0" * 16))
        onward = build_packet(b"x", [own, self.provider_node(provider).route_node], [0, 0],
                              Destination(b"\1" * 32, b"\0" * 16))
        sink = await self.send(mix, final, onward)
        await wait_for(lambda: mix.counters.get("packets.dropped", "route_refused")
                       + mix.counters.get("packets.dropped", "unknown_next_hop") == 2, "both refusals")
        self.assertEqual(mix.counters.get("packets.dropped", "route_refused"), 1)
        self.assertEqual(mix.counters.get("packets.dropped", "unknown_next_hop"), 1)
        self.assertEqual(mix.counters.get("packets.forwarded"), 0)
        await self.hang_up(sink)

    async def test_replay_refused_after_restart(self):
        """A packet replayed to a restarted mix node is refused: tags persist."""
        provider = await self.start_provider()
        topology = Topology(providers=[self.provider_node(provider)])
        data_dir = self.mktemp()
        mix = await self.start_mix(topology, data_dir=data_dir)
        route = [self.mix_route_node(mix), self.provider_node(provider).route_node]
        packet = build_packet(b"once", route, [0, 0], Destination(b"\1" * 32, b"\0" * 16))
        sink = await self.send(mix, packet)
        await wait_for(lambda: mix.counters.get("packets.forwarded") == 1, "forwarding")
        await self.hang_up(sink)
        await mix.stopService()
        again = await self.start_mix(topology, data_dir=data_dir)
        sink = await self.send(again, packet)
        await wait_for(lambda: again.counters.get("packets.dropped", "replay") == 1, "the refusal")
        self.assertEqual(again.counters.get("packets.forwarded"), 0)
        await self.hang_up(sink)

    async def test_stop_sends_delayed_packets(self):
        """Stopping sends packets still in their delay on at once, losing none."""
        provider = await self.start_provider()
        mix = await self.start_mix(Topology(providers=[self.provider_node(provider)]))
        route = [self.mix_route_node(mix), self.provider_node(provider).route_node]
        destination = Destination(b"\1" * 32, b"\0" * 16)
        # The first packet, without delay, opens the link to the provider.
        # (Stopping while that link is still connecting logs an error from
        # MixSenderPool; reported, and not what this test is about.)
        sink = await self.send(mix, build_packet(b"early", route, [0, 0], destination))
        await wait_for(lambda: provider.counters.get("packets.received", "mix") == 1, "the link")
        sink.transport.write(encode_frame(build_packet(b"late", route, [int(20e9), 0], destination)))
        await wait_for(lambda: mix.node.delayed_count == 1, "scheduling")
        await self.hang_up(sink)
        await mix.stopService()
        self.assertEqual(mix.counters.get("packets.forwarded"), 2)
        await wait_for(lambda: provider.counters.get("packets.received", "mix") == 2, "arrival")

    async def test_reload_reads_the_topology_file_again(self):
        """reload() (SIGHUP) takes the topology file's new contents; other changes wait for a restart."""
        provider = await self.start_provider()
        path = self.mktemp()
        dump_topology(Topology(), path)
        mix = await self.start_mix(None, topology_path=path)
        node = self.provider_node(provider)
        self.assertFalse(mix.topology.is_known_node(node.address))
        dump_topology(Topology(providers=[node]), path)
        config = MixNodeConfig(data_dir=mix.config.data_dir, mix_listen=[LOOPBACK], stats_interval=0,
                               topology=path, max_delay=5.0)
        self.assertEqual(mix.reload(config), (["topology"], ["--max-delay"]))
        self.assertTrue(mix.topology.is_known_node(node.address))
        self.assertEqual(mix.config.max_delay, 30.0)

    async def test_listening_is_logged(self):
        """Starting logs 'Listening on host:port (mix link)'."""
        from twisted.logger import globalLogPublisher

        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        mix = await self.start_mix(Topology())
        address = mix.mix_ports[0].getHost()
        from twisted.logger import formatEvent

        lines = [formatEvent(e) for e in events]
        self.assertIn(f"Listening on 127.0.0.1:{address.port} (mix link)", lines)


class MixNodeCapsTests(TestCase):
    """The mix node's connection caps and deadlines come from its options."""

    start_mix = LoopbackTests.start_mix
    send = LoopbackTests.send
    hang_up = LoopbackTests.hang_up

    async def test_per_address_cap_and_frame_deadline(self):
        """
        With ``--max-connections-per-ip 2`` a third connection from the same
        address is closed and counted; with ``--frame-timeout`` a peer that
        begins a frame and never finishes it is closed.
        """
        options = MixNodeOptions()
        options.parseOptions(["--topology", "t.json", "--max-connections-per-ip", "2", "--frame-timeout", "0.3"])
        self.assertEqual(options.mixnode_config.max_connections_per_ip, 2)
        self.assertEqual(options.mixnode_config.frame_timeout, 0.3)
        mix = await self.start_mix(Topology(), max_connections_per_ip=2, frame_timeout=0.3)
        first = await self.send(mix)
        second = await self.send(mix)
        third = await self.send(mix)
        await third.closed
        self.assertEqual(mix.counters.get("mix_link.refused", "too_many_from_peer"), 1)
        own = LoopbackTests.mix_route_node(self, mix)
        frame = encode_frame(build_packet(b"x", [own], [0], Destination(b"\1" * 32, b"\0" * 16)))
        first.transport.write(frame[:100])  # the start of a frame, never finished
        await first.closed
        self.assertEqual(mix.counters.get("mix_link.idle_timeout", "frame"), 1, mix.counters.snapshot())
        await self.hang_up(second)


class Collector(Protocol):
    """A stand-in next node: keeps the packets of the frames it receives, in order."""

    def __init__(self, packets):
        from nymprov.wire.frames import FrameDecoder

        self._decoder = FrameDecoder()
        self._packets = packets

    def dataReceived(self, data):
        self._packets.extend(frame.packet for frame in self._decoder.feed(data))


class MixWorkerTests(TestCase):
    """Forward hops unwrapped in worker processes, against the reactor path."""

    timeout = 60
    start_mix = LoopbackTests.start_mix
    send = LoopbackTests.send
    hang_up = LoopbackTests.hang_up

    async def next_node(self):
        from twisted.internet.endpoints import TCP4ServerEndpoint
        from twisted.internet.protocol import Factory

        from nymprov.sphinx import KeyPair

        packets = []
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Factory.forProtocol(lambda: Collector(packets)))
        self.addCleanup(port.stopListening)
        key = KeyPair.generate()
        node = ProviderNode(b"\7" * 32, key.public_bytes, "127.0.0.1", port.getHost().port, "127.0.0.1", 1)
        return node, key, packets

    async def run_mixed(self, workers):
        """
        Through a mix node with ``workers`` unwrap workers: 40 good packets
        without delay, a final hop, one to an unknown node, a bad MAC, a
        replay.  :returns: the messages the next node got, in order, the
        mix's packet counters, and the mix.
        """
        from nymprov.sphinx import process_packet

        node, key, received = await self.next_node()
        mix = await self.start_mix(Topology(providers=[node]), unwrap_workers=workers)
        if workers:
            await wait_for(lambda: len(mix.unwrapper.workers) == workers, "the workers")
        own = LoopbackTests.mix_route_node(self, mix)
        stranger = Node(b"\3" * 32, node.sphinx_key)
        to = Destination(b"\1" * 32, b"\0" * 16)
        good = [build_packet(b"%d" % i, [own, node.route_node], [0, 0], to) for i in range(40)]
        bad_mac = bytearray(good[0])
        bad_mac[40] ^= 1
        odd = [build_packet(b"f", [own], [0], to), build_packet(b"u", [own, stranger], [0, 0], to),
               bytes(bad_mac), good[5]]
        sink = await self.send(mix, *good[:20], *odd, *good[20:])
        await wait_for(lambda: mix.counters.get("packets.received", "mix") == 44, "every packet read")
        await wait_for(lambda: len(received) == 40, "40 packets at the next node")
        await self.hang_up(sink)
        counters = {k: v for k, v in mix.counters.snapshot().items() if k.startswith("packets.")}
        return [process_packet(p, key).message() for p in received], counters, mix

    async def test_same_as_the_reactor_path_in_order(self):
        """
        With a worker, the mix node forwards the same packets in the order
        they came, and refuses the same ones for the same reasons, as
        without; the batches were unwrapped in the worker.
        """
        here, here_counters, _ = await self.run_mixed(0)
        there, there_counters, mix = await self.run_mixed(1)
        self.assertEqual(there_counters, here_counters)
        self.assertEqual(there_counters["packets.forwarded"], 40)
        for reason in ("route_refused", "unknown_next_hop", "bad_mac", "replay"):
            self.assertEqual(there_counters[f"packets.dropped.{reason}"], 1, reason)
        self.assertEqual(here, [b"%d" % i for i in range(40)])
        self.assertEqual(there, here)
        self.assertGreater(mix.unwrapper.batches_in_workers, 0)


class BenchTests(TestCase):
    """``nym-mixnode bench`` runs a real mix node between a generator and a sink."""

    timeout = 180

    async def test_small_run(self):
        """Every packet is forwarded, and the figures are printed."""
        import sys

        from twisted.internet.utils import getProcessOutputAndValue

        out, err, code = await getProcessOutputAndValue(
            sys.executable, ["-m", "nymprov.cli.mixnode", "bench", "--packets", "400", "--runs", "1",
                             "--rounds", "1", "--per-round", "50"],
            env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)), reactor=reactor)
        text = out.decode()
        self.assertEqual(code, 0, err.decode()[-2000:])
        self.assertIn("forward-hop unwrap only", text)
        self.assertIn("whole-node forward ingest", text)
        self.assertIn("forwarded 400 (last run); dropped: none", text)
