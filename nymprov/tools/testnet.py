"""
A whole mixnet on one machine: mix layers and providers as separate
processes on loopback, with their topology file and ready client configs.
"""

import json
import os
import socket
import sys
import time
from dataclasses import dataclass, field

from twisted.internet.defer import Deferred, DeferredList, FirstError, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol, Protocol
from twisted.internet.task import deferLater
from twisted.logger import Logger

from nymprov.keys import load_or_create_keys
from nymprov.topology import MixNode, ProviderNode, Topology, dump_topology

LOOPBACK = "127.0.0.1"

#: How long start waits for every node to listen.
READY_TIMEOUT = 60.0  # seconds
#: How long stop waits after SIGTERM before it sends SIGKILL.
STOP_TIMEOUT = 10.0  # seconds
#: Between two attempts to connect to a node that is starting.
_PROBE_INTERVAL = 0.1  # seconds

#: Registrations per client IP per hour: tests register many clients from
#: one address, so the testnet's providers allow plenty.
TESTNET_REGISTER_RATE = 1_000_000

#: The client configs' stream rates (packets per second): twice the
#: client defaults, so that a tour's messages wait little in the queue.
TESTNET_SEND_RATE = 100.0
TESTNET_LOOP_RATE = 10.0

#: The service node's SURB-ACK budget a second, shared by all its clients.
TESTNET_SERVICE_ACK_RATE = 5000.0

#: Every node's own loops (λ_M, per second) and the window over which
#: their returned share is judged: on in the testnet, so that a node that
#: drops packets shows in the others' logs within a minute.
TESTNET_NODE_LOOP_RATE = 1.0
TESTNET_NODE_LOOP_WINDOW = 20.0

TOPOLOGY_FILE = "topology.json"
STATE_FILE = "testnet.json"
#: The identity of the testnet's socks5 service provider, for ``--service``.
SOCKS5_SERVICE_FILE = "socks5-service"

# The repository (or site-packages) holding this nymprov, so that children
# run the same code as the parent even when it is not installed.
_CODE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class TestnetError(Exception):
    """A node of the testnet did not start, or exited."""


@dataclass
class TestnetNode:
    """
    One node process of a testnet.

    :ivar name: ``mix-L-I`` (layer L, index I from 1) or ``provider-N``.
    :ivar kind: ``"mix"``, ``"provider"``, ``"service"`` (a provider with
        another backend than ``inbox``) or ``"directory"``.
    :ivar data_dir: its data directory.
    :ivar mix_port: the port of its mix link.
    :ivar client_port: the port of its client API (providers only).
    :ivar log_path: the file that receives its output.
    :ivar pid: its process id while it runs, else ``None``.
    :ivar exit_status: how its last process ended: the exit code, or minus
        the signal that killed it; ``None`` before it ended.
    """

    name: str
    kind: str
    data_dir: str
    mix_port: int
    client_port: int = None
    log_path: str = None
    pid: int = None
    exit_status: int = None
    _process: object = field(default=None, repr=False)
    _ended: Deferred = field(default=None, repr=False)
    _log_start: int = field(default=0, repr=False)  # log size when last started

    @property
    def ports(self):
        """Every port the node listens on."""
        return [p for p in (self.mix_port, self.client_port) if p is not None]

    @property
    def running(self):
        """Whether its process is alive (as far as the reactor knows)."""
        return self._process is not None


class _NodeProcessProtocol(ProcessProtocol):
    """Fires ``ended`` with the exit reason when the process is gone."""

    def __init__(self):
        self.ended = Deferred()

    def processEnded(self, reason):
        self.ended.callback(reason)


def _free_ports(count):
    """
    ``count`` distinct loopback ports that were free a moment ago.

    The kernel picks each; all are held open together so that none is
    picked twice, then released for the nodes to take.
    """
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((LOOPBACK, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class Testnet:
    """
    A mixnet of ``layers`` x ``per_layer`` mix nodes and ``providers``
    providers, each a separate process on loopback.

    Building it creates the directory, every node's keys (and each
    provider's TLS certificate), ``topology.json`` and one client config
    per provider; :meth:`start` launches the processes.

    :param directory: where everything goes (created if missing).
    :param int base_port: first port to use (consecutive ports follow);
        ``None`` lets the kernel pick free ones.
    :param float mean_delay_ms: the mean per-hop delay written into the
        client configs (clients choose delays; nodes obey them).
    :param reactor: provides ``IReactorProcess``, ``IReactorTCP`` and
        ``IReactorTime``; the global reactor if ``None``.
    :param float node_loop_rate: λ_M of every node (0: none).
    :param float node_loop_window: seconds per window of loop judging.
    :param dict extra_arguments: node name -> more command-line arguments
        for it (``{"mix-2-1": ["--fault-drop", "1"]}``).
    :param float epoch_length: seconds per epoch; with it a ``directory``
        process runs too, every node publishes to it and rotates its Sphinx
        keys, the client configs name it, and ``topology.json`` is its
        current document, rewritten as epochs pass.  ``0``: no directory,
        one key per node forever.
    :param str socks5_policy: an exit policy file: then one more provider,
        ``socks5-1``, runs the ``socks5`` backend with it (a network
        requester for ``nym-client run --socks5``; it serves no client API),
        and ``socks5-service`` in the directory names its identity.
    """

    log = Logger()

    def __init__(self, directory, layers=3, per_layer=1, providers=2, *, mean_delay_ms=50.0,
                 base_port=None, reactor=None, python=sys.executable,
                 ready_timeout=READY_TIMEOUT, stop_timeout=STOP_TIMEOUT,
                 node_loop_rate=TESTNET_NODE_LOOP_RATE, node_loop_window=TESTNET_NODE_LOOP_WINDOW,
                 extra_arguments=None, epoch_length=0.0, socks5_policy=None):
        if reactor is None:
            from twisted.internet import reactor
        if not 1 <= layers <= 4:
            raise ValueError("layers must be 1..4 (a route has at most 5 hops)")
        if per_layer < 1 or providers < 1:
            raise ValueError("per_layer and providers must be at least 1")
        self.directory = os.path.abspath(directory)
        self._reactor = reactor
        self._python = python
        self._ready_timeout = ready_timeout
        self._stop_timeout = stop_timeout
        self.mean_delay_ms = mean_delay_ms
        self._loops = ["--node-loop-rate", repr(float(node_loop_rate)),
                       "--node-loop-window", repr(float(node_loop_window))]
        self._extra_arguments = dict(extra_arguments or {})
        os.makedirs(os.path.join(self.directory, "logs"), exist_ok=True)
        mix_count = layers * per_layer
        self._socks5_policy = socks5_policy and os.path.abspath(socks5_policy)
        port_count = mix_count + 2 * providers + (1 if epoch_length else 0) + (1 if socks5_policy else 0)
        if base_port is None:
            ports = iter(_free_ports(port_count))
        else:
            ports = iter(range(base_port, base_port + port_count))
        self.nodes = {}
        self.network = None
        if epoch_length:
            from nymprov.tools.testnet_network import TestnetDirectory

            node = self._add_node("directory", "directory", next(ports))
            self.network = TestnetDirectory(node.data_dir, LOOPBACK, node.mix_port, float(epoch_length))
        mixnodes, provider_nodes = [], []
        for layer in range(1, layers + 1):
            for index in range(1, per_layer + 1):
                node = self._add_node(f"mix-{layer}-{index}", "mix", next(ports))
                keys = load_or_create_keys(node.data_dir)
                mixnodes.append(MixNode(keys.identity_public_bytes, keys.sphinx.public_bytes,
                                        LOOPBACK, node.mix_port, layer))
        from nymprov.net.tls import certificate_fingerprint, load_or_create_certificate

        for index in range(1, providers + 1):
            node = self._add_node(f"provider-{index}", "provider", next(ports), next(ports))
            keys = load_or_create_keys(node.data_dir)
            fingerprint = certificate_fingerprint(load_or_create_certificate(node.data_dir))
            provider_nodes.append(ProviderNode(
                keys.identity_public_bytes, keys.sphinx.public_bytes, LOOPBACK, node.mix_port,
                LOOPBACK, node.client_port, True, fingerprint,
            ))
        self.socks5_service = None
        if socks5_policy:
            node = self._add_node("socks5-1", "service", next(ports))
            keys = load_or_create_keys(node.data_dir)
            provider_nodes.append(ProviderNode(keys.identity_public_bytes, keys.sphinx.public_bytes,
                                               LOOPBACK, node.mix_port, None, None, False, None))
            self.socks5_service = provider_nodes[-1].identity_base58
            with open(os.path.join(self.directory, SOCKS5_SERVICE_FILE), "w") as f:
                f.write(self.socks5_service + "\n")
        self.topology = Topology(mixnodes, provider_nodes)
        self.topology_path = os.path.join(self.directory, TOPOLOGY_FILE)
        dump_topology(self.topology, self.topology_path)
        self.client_config_paths = self._write_client_configs()

    def _add_node(self, name, kind, mix_port, client_port=None):
        node = TestnetNode(
            name, kind, os.path.join(self.directory, name), mix_port, client_port,
            os.path.join(self.directory, "logs", f"{name}.log"),
        )
        self.nodes[name] = node
        return node

    # -- files ---------------------------------------------------------------

    def _write_client_configs(self):
        clients = os.path.join(self.directory, "clients")
        os.makedirs(clients, exist_ok=True)
        paths = []
        inboxes = [p for p in self.topology.providers if p.client_address is not None]
        for index, provider in enumerate(inboxes, start=1):
            path = os.path.join(clients, f"client-{index}.toml")
            with open(path, "w") as f:
                f.write(
                    f"# A client of provider-{index} of the testnet in {self.directory}.\n"
                    f"topology = {json.dumps(self.topology_path)}\n"
                    f"provider = {json.dumps(provider.identity_base58)}\n"
                    f"provider_client_address = {json.dumps(provider.client_address)}\n"
                    f"certificate_fingerprint = {json.dumps(provider.certificate_fingerprint.hex())}\n"
                    f"mean_delay_ms = {float(self.mean_delay_ms)!r}\n"
                    f"send_rate = {TESTNET_SEND_RATE!r}\n"
                    f"loop_rate = {TESTNET_LOOP_RATE!r}\n"
                    f"data_dir = {json.dumps(os.path.join(clients, f'client-{index}'))}\n"
                )
                if self.network is not None:
                    f.write(self.network.client_config_lines())
            paths.append(path)
        return paths

    def _write_state(self):
        state = {
            "topology": self.topology_path,
            "clients": self.client_config_paths,
            "nodes": [
                {"name": n.name, "kind": n.kind, "pid": n.pid, "data_dir": n.data_dir,
                 "mix_address": f"{LOOPBACK}:{n.mix_port}",
                 "client_address": n.client_port and f"{LOOPBACK}:{n.client_port}",
                 "log": n.log_path}
                for n in self.nodes.values()
            ],
        }
        with open(os.path.join(self.directory, STATE_FILE), "w") as f:
            json.dump(state, f, indent=2)

    # -- processes -----------------------------------------------------------

    def _arguments(self, node):
        if node.kind == "directory":
            return self.network.arguments()
        return self._node_arguments(node) + (self.network.node_arguments() if self.network else [])

    def _node_arguments(self, node):
        listen = f"tcp:{node.mix_port}:interface={LOOPBACK}"
        extra = self._loops + self._extra_arguments.get(node.name, [])
        if node.kind == "mix":
            layer = node.name.split("-")[1]
            return ["-m", "nymprov.cli.mixnode", "run", "--data-dir", node.data_dir,
                    "--mix-listen", listen, "--topology", self.topology_path,
                    "--stats-interval", "0", "--layer", layer,
                    "--http-listen", f"tcp:0:interface={LOOPBACK}"] + extra
        if node.kind == "service":
            # --ack-rate is per destination: a service's is all its clients'.
            serving = ["--backend", "socks5", "--backend-option", f"policy={self._socks5_policy}",
                       "--ack-rate", str(TESTNET_SERVICE_ACK_RATE)]
        else:
            serving = ["--client-listen", f"tcp:{node.client_port}:interface={LOOPBACK}",
                       "--register-rate", str(TESTNET_REGISTER_RATE)]
        arguments = ["-m", "nymprov", "run", "--data-dir", node.data_dir,
                     "--mix-listen", listen, *serving, "--stats-interval", "0",
                     # Several nodes on one machine: each its own HTTP port;
                     # no admin socket (a deep --dir would not fit one).
                     "--http-listen", f"tcp:0:interface={LOOPBACK}", "--admin-socket", "none"]
        # The provider relays its clients' packets to the topology's first
        # layer; the same file tells the mixes where everyone is.
        return arguments + ["--topology", self.topology_path] + extra

    def _spawn(self, node):
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_CODE_ROOT, env.get("PYTHONPATH")]))
        env["PYTHONUNBUFFERED"] = "1"
        protocol = _NodeProcessProtocol()
        with open(node.log_path, "ab") as log:
            node._log_start = log.seek(0, os.SEEK_END)
            # The child writes straight to its log file: nothing passes
            # through this process, which may be busy or gone.
            process = self._reactor.spawnProcess(
                protocol, self._python, [self._python] + self._arguments(node), env=env,
                path=self.directory, childFDs={0: "w", 1: log.fileno(), 2: log.fileno()},
            )
        node._process = process
        node.pid = process.pid
        node._ended = protocol.ended
        protocol.ended.addBoth(self._ended, node, process)
        self.log.info("started {name} (pid {pid})", name=node.name, pid=node.pid)

    def _ended(self, reason, node, process):
        # The exit status is kept and logged, not raised: a node that dies
        # is the caller's news through ``running`` and ``exit_status``.
        status = reason.value
        node.exit_status = status.signal and -status.signal or status.exitCode
        self.log.info("{name} exited with status {status}", name=node.name, status=node.exit_status)
        if node._process is process:
            node._process = None
            node.pid = None

    @inlineCallbacks
    def _wait_listening(self, node):
        # Ready means: the node itself logged that it listens on each port
        # (another process on a port would fool a connection alone), and a
        # connection to each port succeeds.
        deadline = time.monotonic() + self._ready_timeout
        for port in node.ports:
            while True:
                if not node.running:
                    raise TestnetError(f"{node.name} exited while starting; see {node.log_path}")
                if self._logged_listening(node, port) and (yield self._probe(port)):
                    break
                if time.monotonic() > deadline:
                    raise TestnetError(f"{node.name} not listening on port {port} after"
                                       f" {self._ready_timeout:g} s; see {node.log_path}")
                yield deferLater(self._reactor, _PROBE_INTERVAL, lambda: None)

    @staticmethod
    def _logged_listening(node, port):
        try:
            with open(node.log_path, "rb") as log:
                log.seek(node._log_start)
                text = log.read()
        except OSError:
            return False
        return f"Listening on {LOOPBACK}:{port} ".encode("ascii") in text

    def _probe(self, port):
        endpoint = TCP4ClientEndpoint(self._reactor, LOOPBACK, port, timeout=1)
        d = connectProtocol(endpoint, Protocol())

        def connected(protocol):
            protocol.transport.abortConnection()
            return True

        return d.addCallbacks(connected, lambda _: False)

    @inlineCallbacks
    def start(self):
        """
        Launch every node not yet running and wait until each listens.

        :returns: a Deferred firing with this testnet, or failing with
            :class:`TestnetError` (after stopping whatever did start).
        """
        # The directory, then mixes: a provider's first packets then find them up.
        order = sorted(self.nodes.values(), key=lambda n: ("directory", "mix", "provider", "service").index(n.kind))
        for node in order:
            if not node.running:
                self._spawn(node)
        self._write_state()
        waits = [self._wait_listening(n) for n in order]
        try:
            yield DeferredList(waits, fireOnOneErrback=True, consumeErrors=True)
        except FirstError as e:
            yield self.stop()
            # The other waits end at their next look, now that no node runs.
            yield DeferredList(waits, consumeErrors=True)
            e.subFailure.raiseException()
        if self.network is not None:
            # Ready means: every node is in the directory's document too.
            identities = [load_or_create_keys(n.data_dir).identity_public_bytes
                          for n in order if n.kind != "directory"]
            try:
                yield self.network.wait_for_nodes(self._reactor, identities, self.topology_path,
                                                  self._ready_timeout)
            except Exception:
                yield self.stop()
                raise
        return self

    def start_node(self, name):
        """
        (Re)start the node ``name`` with its keys, data and ports.

        :returns: a Deferred firing once it listens.
        """
        node = self.nodes[name]
        if not node.running:
            self._spawn(node)
            self._write_state()
        return self._wait_listening(node)

    @inlineCallbacks
    def stop_node(self, name):
        """
        Stop the node ``name``: SIGTERM, then SIGKILL if it has not exited
        within the stop timeout.

        :returns: a Deferred firing once its process is gone.
        """
        node = self.nodes[name]
        process, ended = node._process, node._ended
        if process is None:
            return
        self._signal(process, "TERM")
        timer = self._reactor.callLater(self._stop_timeout, self._kill, node, process)
        yield ended
        if timer.active():
            timer.cancel()
        self._write_state()

    def _kill(self, node, process):
        self.log.warn("{name} did not stop in time; killing it", name=node.name)
        self._signal(process, "KILL")

    @staticmethod
    def _signal(process, name):
        try:
            process.signalProcess(name)
        except (ProcessExitedAlready, OSError):
            pass

    def stop(self):
        """
        Stop every node: mixes first, so that the delayed packets they send
        on at shutdown still find their providers listening.

        :returns: a Deferred firing once every process is gone.
        """
        if self.network is not None:
            self.network.stop()
        d = DeferredList([], consumeErrors=True)
        for kind in ("mix", "service", "provider", "directory"):
            d.addCallback(lambda _, kind=kind: DeferredList(
                [self.stop_node(n.name) for n in self.nodes.values() if n.kind == kind], consumeErrors=True))
        return d.addCallback(lambda _: None)

    @property
    def running(self):
        """Whether any node process is alive."""
        return any(node.running for node in self.nodes.values())

    def describe(self):
        """A few lines telling a person what runs where and how to use it."""
        lines = [f"testnet in {self.directory}", f"  topology: {self.topology_path}"]
        if self.network is not None:
            lines.append(f"  directory: {self.network.url} key {self.network.key_text}"
                         f" (epochs of {self.network.epoch_length:g} s)")
        for node in self.nodes.values():
            if node.kind == "directory":
                continue
            where = f"mix link {LOOPBACK}:{node.mix_port}"
            if node.client_port is not None:
                where += f", client API (TLS) {LOOPBACK}:{node.client_port}"
            lines.append(f"  {node.name:<12} pid {node.pid}  {where}  log: {node.log_path}")
        if self.socks5_service is not None:
            lines.append(f"  socks5 service: {self.socks5_service}"
                         f" (also in {os.path.join(self.directory, SOCKS5_SERVICE_FILE)})")
        lines.append("  client configs:")
        lines += [f"    {path}" for path in self.client_config_paths]
        lines += [
            "",
            "Point a client (the client library or command, see doc/client.md) at one of",
            "the client configs, or at topology.json and a provider's identity.",
            "See doc/testnet.md. Ctrl-C stops every node.",
        ]
        return "\n".join(lines)
