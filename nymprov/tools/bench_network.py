"""
End-to-end benchmark: the capacity of a local testnet.  Messages/s and
latency percentiles from client A (provider 1) to client B (provider 2),
each client a process of its own, with the CPU each process spent per
message, against the floor: the Sphinx work one message costs (building
its packet and its SURB-ACK, and unwrapping both at every hop), at costs
measured in the same run.
"""

import os
import statistics
import sys
import tempfile
import time

from twisted.internet.defer import Deferred, DeferredQueue, TimeoutError as NoMessage, ensureDeferred
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import react
from twisted.python import usage

#: Seconds between the clients' pulls.  Each pull asks for a padded
#: answer of ``--pull-batch`` slots (~2.1 KB each), so pulling much more
#: often makes the benchmark measure its own pulls; a full batch is pulled
#: again at once.
PULL_INTERVAL = 0.2


class BenchOptions(usage.Options):
    synopsis = "Usage: nym-client bench [options]"
    optParameters = [
        ["count", "n", 10_000, "messages per run", int],
        ["size", "s", 1000, "bytes per message (one fragment up to 1545)", int],
        ["delays", None, "0", "mean per-hop delays to try, in ms, comma-separated"],
        ["senders", None, 2, "sending clients of provider 1, each a process", int],
        ["pull-batch", None, 256, "messages per pull of each client (the providers' --pull-max is raised"
                                  " to it: fewer, larger pulls cost less per message)", int],
        ["runs", "r", 1, "runs per delay (their median is printed too)", int],
        ["window", "w", 512, "messages sent and not yet received at most (the offered load)", int],
        ["dir", None, None, "testnet directory [default: a new temporary one]"],
        ["unwrap-workers", None, 0, "unwrap worker processes per node (0: each node unwraps on its"
                                    " reactor; the nodes share this machine's cores already)", int],
        ["send-rate", None, None, "shape the clients' sending at this λ_P, packets per second"
                                  " [default: unshaped, to measure the network]", float],
    ]
    optFlags = [["unshaped", None, "clients send each packet at once (the default without --send-rate)"]]

    def postOptions(self):
        for name in ("count", "size", "runs", "window", "senders", "pull-batch"):
            if self[name] < 1:
                raise usage.UsageError(f"--{name} must be at least 1")
        if self["unwrap-workers"] < 0:
            raise usage.UsageError("--unwrap-workers must not be negative")


def percentile(values, fraction):
    """The ``fraction`` quantile of ``values`` (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


def shaping(options):
    """Client keyword arguments for the shaping the options ask for."""
    if options["unshaped"] or options["send-rate"] is None:
        return {"shaped": False}
    return {"shaped": True, "send_rate": options["send-rate"]}


def describe_shaping(shaping):
    """One line saying whether the clients shaped their sending."""
    if not shaping["shaped"]:
        return "shaping OFF (unshaped clients: every packet leaves at once, observable)"
    return f"shaping ON: λ_P = {shaping['send_rate']:g} packets/s per client"


#: The providers' limits during a benchmark: the default per-client send
#: rate (200 packets/s) and SURB-ACK budget would measure themselves.
RAISED_LIMITS = ["--send-rate", "1000000", "--ack-rate", "1000000"]

#: Seconds without a message after which a run ends with what arrived.
QUIET_LIMIT = 60.0


def cpu_seconds(pid):
    """:returns: CPU seconds of process ``pid`` and of its live children (unwrap workers)."""
    from nymprov.tools.bench_packets import process_cpu_seconds

    try:
        total = process_cpu_seconds(pid)
    except (OSError, ValueError, IndexError):
        return 0.0  # ended (the run says why)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        total += process_cpu_seconds(int(entry))
            except (OSError, ValueError, IndexError):
                pass  # gone meanwhile
    return total


def cpu_snapshot(net, peers):
    """
    :returns: ``{name: CPU seconds}`` of every testnet node, every client
        process (``peers``: name -> pid) and this process.
    """
    snapshot = {name: cpu_seconds(node.pid) for name, node in net.nodes.items() if node.pid}
    snapshot.update({name: cpu_seconds(pid) for name, pid in peers.items()})
    times = os.times()
    snapshot["bench (this process)"] = times.user + times.system
    return snapshot


class _Peer(ProcessProtocol):
    """A client process (:mod:`nymprov.tools.bench_peer`): its lines in a queue."""

    def __init__(self, log_path):
        self.lines = DeferredQueue()
        self.ended = Deferred()
        self.log_path = log_path
        self._partial = b""
        self._log = open(log_path, "ab")

    def outReceived(self, data):
        *lines, self._partial = (self._partial + data).split(b"\n")
        for line in lines:
            self.lines.put(line.decode("ascii").split())

    def errReceived(self, data):
        self._log.write(data)

    def say(self, *words):
        if self.transport is not None and self.transport.pid:
            self.transport.write((" ".join(str(word) for word in words) + "\n").encode("ascii"))

    async def expect(self, reactor, first_word, timeout=QUIET_LIMIT):
        """:returns: the next line that starts with ``first_word``, as words."""
        while True:
            words = await self.lines.get().addTimeout(timeout, reactor)
            if words is None:
                raise RuntimeError(f"a client process ended early; its output is in {self.log_path}")
            if words and words[0] == first_word:
                return words

    def processEnded(self, reason):
        self._log.close()
        self.lines.put(None)
        self.ended.callback(None)


def _spawn_peer(reactor, net, role, provider, name, arguments):
    peer = _Peer(os.path.join(net.directory, "logs", f"bench-{name}.log"))
    command = [sys.executable, "-m", "nymprov.tools.bench_peer", "--topology", net.topology_path,
               "--provider", provider.identity_base58, "--pull-interval", repr(PULL_INTERVAL)] + arguments + [role]
    reactor.spawnProcess(peer, sys.executable, command, env=os.environ)
    return peer


async def _end_peer(reactor, peer):
    if peer.ended.called:
        return
    peer.say("stop")
    peer.transport.closeStdin()
    try:
        await peer.ended.addTimeout(QUIET_LIMIT, reactor)
    except NoMessage:
        try:
            peer.transport.signalProcess("KILL")
        except ProcessExitedAlready:
            pass


def _sender_name(number, count):
    return "client A (sender)" if count == 1 else f"client A{number} (sender)"


async def run_once(reactor, net, count, size, mean_delay_ms, shaping=None, window=512, senders_count=2,
                   pull_batch=64):
    """
    Send ``count`` messages from a client of provider 1 to one of provider 2,
    each client in a process of its own, at most ``window`` of them sent and
    not yet received at a time.

    :param dict shaping: client keyword arguments (``shaped``, ``send_rate``).
    :returns: a dict: ``messages_per_second``, ``p50_ms``, ``p95_ms``,
        ``p99_ms``, ``received`` (distinct messages), ``duplicates``,
        ``acknowledged``, and ``cpu_us``: microseconds of CPU per message by
        process.
    """
    first, second = net.topology.providers
    common = ["--size", str(size), "--mean-delay", repr(mean_delay_ms / 1000.0), "--pull-batch", str(pull_batch)]
    if shaping and shaping.get("shaped"):
        common += ["--send-rate", repr(shaping["send_rate"])]
    receiver = _spawn_peer(reactor, net, "receive", second, "receiver", common)
    senders = []
    try:
        address = (await receiver.expect(reactor, "address"))[1]
        for number in range(1, senders_count + 1):
            senders.append(_spawn_peer(reactor, net, "send", first, f"sender-{number}",
                                       common + ["--recipient", address]))
        for sender in senders:
            await sender.expect(reactor, "ready")
        peers = {"client B (receiver)": receiver.transport.pid}
        peers.update({_sender_name(number, senders_count): sender.transport.pid
                      for number, sender in enumerate(senders, start=1)})
        before = cpu_snapshot(net, peers)
        started = time.monotonic()
        next_index = min(window, count)
        share = -(-next_index // len(senders))
        for number, sender in enumerate(senders):
            first = number * share
            sender.say("send", first, max(0, min(share, next_index - first)))
        turn = 0
        latencies, seen, duplicates = [], set(), 0
        while len(seen) < count:
            # A message lost for good would hold the window, and the run,
            # for ever: after a quiet minute the run ends with what came.
            try:
                words = await receiver.expect(reactor, "got")
            except NoMessage:
                break
            for sender in senders:
                if sender.ended.called:
                    raise RuntimeError(f"a sender ended early; its output is in {sender.log_path}")
            index = int(words[1])
            if index in seen:
                duplicates += 1
                continue
            seen.add(index)
            latencies.append(float(words[2]))
            if next_index < count:
                senders[turn].say("send", next_index, 1)
                turn = (turn + 1) % len(senders)
                next_index += 1
        elapsed = time.monotonic() - started
        after = cpu_snapshot(net, peers)
        if not seen:
            raise RuntimeError(f"no message arrived within {QUIET_LIMIT:g} s")
        acknowledged = retransmitted = 0
        if len(seen) == count:
            # Every message arrived: their ACKs follow at once.
            for sender in senders:
                sender.say("finish")
            for sender in senders:
                words = await sender.expect(reactor, "done", QUIET_LIMIT + 10)
                acknowledged += int(words[1])
                retransmitted += int(words[3])
    finally:
        for peer in senders + [receiver]:
            await _end_peer(reactor, peer)
    return {
        "messages_per_second": len(seen) / elapsed,
        "p50_ms": 1000 * percentile(latencies, 0.50),
        "p95_ms": 1000 * percentile(latencies, 0.95),
        "p99_ms": 1000 * percentile(latencies, 0.99),
        "received": len(seen),
        "duplicates": duplicates,
        "acknowledged": acknowledged,
        "retransmitted": retransmitted,
        "cpu_us": {name: (after[name] - before[name]) * 1e6 / len(seen) for name in after if name in before},
    }


def measure_message_work(layers=3, rounds=5, per_round=300):
    """
    Time the Sphinx work of one message in this process: building its
    packet and its SURB-ACK (as a client does, over ``layers`` mixes and a
    provider), and unwrapping each at every hop (as the nodes do).

    :returns: ``{part: median microseconds}`` for ``build_packet``,
        ``build_ack``, ``forward_packet`` and ``forward_ack`` (one forward
        hop, averaged over the layers), ``final_packet`` and ``final_ack``
        (the final hop, its message recovered), and ``x25519``.
    """
    from nacl.bindings import crypto_scalarmult

    from nymprov.sphinx import SURB, Destination, KeyPair, Node, PacketSize, build_packet, encode_address
    from nymprov.sphinx import process_packet

    keys = [KeyPair.generate() for _ in range(layers + 1)]
    route = [Node(encode_address("127.0.0.1", 1790 + hop), key.public_bytes) for hop, key in enumerate(keys)]
    destination = Destination(bytes(32), bytes(16))
    delays = [0] * len(route)
    message = bytes(PacketSize.REGULAR.plaintext // 2)
    ack = bytes(PacketSize.ACK.plaintext)
    points = [KeyPair.generate().public_bytes for _ in range(per_round)]
    timings = {part: [] for part in ("build_packet", "build_ack", "forward_packet", "forward_ack",
                                     "final_packet", "final_ack", "x25519")}

    def note(part, start, operations):
        timings[part].append((time.perf_counter() - start) / operations * 1e6)

    def timed(part, function, items):
        start = time.perf_counter()
        results = [function(item) for item in items]
        note(part, start, len(items))
        return results

    def unwrap_all(kind, packets):
        start = time.perf_counter()
        for key in keys[:-1]:
            packets = [process_packet(packet, key).packet for packet in packets]
        note(f"forward_{kind}", start, len(packets) * layers)
        timed(f"final_{kind}", lambda packet: process_packet(packet, keys[-1]).message(), packets)

    for _ in range(rounds):
        packets = timed("build_packet", lambda _: build_packet(message, route, delays, destination),
                        range(per_round))
        acks = timed("build_ack",
                     lambda _: SURB.create(route, delays, destination).use(ack, PacketSize.ACK.payload_size)[1],
                     range(per_round))
        unwrap_all("packet", packets)
        unwrap_all("ack", acks)
        secret = keys[0].private_bytes
        timed("x25519", lambda point: crypto_scalarmult(secret, point), points)
    return {part: statistics.median(values) for part, values in timings.items()}


def floor_per_message(work, layers):
    """:returns: microseconds of Sphinx work per message, from :func:`measure_message_work`'s parts."""
    return (work["build_packet"] + work["build_ack"]
            + layers * (work["forward_packet"] + work["forward_ack"])
            + work["final_packet"] + work["final_ack"])


def describe_floor(work, layers, cores):
    """
    The floor's lines, and the floor in messages/s.  A message costs the
    Sphinx work of its packet and its SURB-ACK: building both (the sender),
    a forward hop of each at every mix layer, and a final hop of each (the
    recipient's provider, then the sender's).  In the Nym route the
    sender's provider only relays the packet, unwrapping nothing.
    """
    per_message = floor_per_message(work, layers)
    floor = cores * 1e6 / per_message
    x = work["x25519"]

    def part(name):
        return f"{work[name]:.1f} us ({work[name] / x:.2f} x)"

    lines = [
        f"  X25519 {x:.1f} us; building a packet {part('build_packet')}, a SURB-ACK {part('build_ack')}",
        f"  unwrapping a packet: forward hop {part('forward_packet')}, final hop {part('final_packet')};"
        f" a SURB-ACK: forward hop {part('forward_ack')}, final hop {part('final_ack')}",
        f"  floor: a message is its packet and its SURB-ACK, each built once, {layers} forward hops and a final"
        f" hop: {per_message:.0f} us of Sphinx work; {cores} core(s) allow {floor:.0f} messages/s",
    ]
    return lines, floor


def sphinx_share(name, work, senders=1):
    """
    :returns: the microseconds of Sphinx work per message that process
        ``name`` does by the floor's count (each of ``senders`` builds its
        share of the packets), or ``None`` for a process outside the
        message's path.
    """
    if name.startswith("mix-"):
        return work["forward_packet"] + work["forward_ack"]
    if name.startswith("client A"):
        return (work["build_packet"] + work["build_ack"]) / senders
    return {
        "client B (receiver)": 0.0,
        "provider-1": work["final_ack"],
        "provider-2": work["final_packet"],
    }.get(name)


def describe_cpu(cpu, work, per_message, senders=1):
    """
    The lines of CPU per message by process, and what each on the message's
    path spent beyond its Sphinx work (``per_message`` µs in all).
    """
    lines = ["    CPU per message: " + ", ".join(f"{name} {us:.0f} us" for name, us in sorted(cpu.items()))
             + f"; all {sum(cpu.values()):.0f} us (the floor's Sphinx work: {per_message:.0f} us)"]
    shares = {name: sphinx_share(name, work, senders) for name in cpu}
    beyond = {name: us - shares[name] for name, us in cpu.items() if shares[name] is not None}
    off_path = sum(us for name, us in cpu.items() if shares[name] is None)
    lines.append("    beyond the Sphinx work: " + ", ".join(f"{name} {us:.0f} us" for name, us in sorted(beyond.items()))
                 + f"; the rest {off_path:.0f} us")
    return lines


async def _bench(reactor, options, out):
    from nymprov.tools.testnet import Testnet

    cores = os.cpu_count() or 1
    layers = 3
    work = measure_message_work(layers)
    directory = options["dir"] or tempfile.mkdtemp(prefix="nym-bench-")
    workers = ["--unwrap-workers", str(options["unwrap-workers"])]
    extra = {f"mix-{layer}-1": workers for layer in range(1, layers + 1)}
    pulls = ["--pull-max", str(max(options["pull-batch"], 64))]
    extra.update({f"provider-{n}": RAISED_LIMITS + workers + pulls for n in (1, 2)})
    net = Testnet(directory, layers=layers, per_layer=1, providers=2, reactor=reactor, extra_arguments=extra)
    await net.start()
    try:
        print(f"end to end through {layers} layers and 2 providers on loopback; {options['count']} messages of"
              f" {options['size']} bytes, {options['senders']} client(s) A of provider 1 to B of provider 2,"
              f" each client a process,"
              f" at most {options['window']} in flight, pulls of up to {options['pull-batch']};"
              f" providers' send and ACK limits raised;"
              f" {options['unwrap-workers']} unwrap worker(s) per node", file=out)
        kwargs = shaping(options)
        print(f"  {describe_shaping(kwargs)}", file=out)
        lines, floor = describe_floor(work, layers, cores)
        for line in lines:
            print(line, file=out)
        for delay in [float(d) for d in options["delays"].split(",")]:
            rates = []
            for _ in range(options["runs"]):
                result = await run_once(reactor, net, options["count"], options["size"], delay, kwargs,
                                        options["window"], options["senders"], options["pull-batch"])
                rate = result["messages_per_second"]
                rates.append(rate)
                print(f"  mean delay {delay:5.1f} ms/hop: {rate:7.1f} messages/s ({rate / floor:.0%} of the floor),"
                      f" latency p50 {result['p50_ms']:7.1f} ms, p99 {result['p99_ms']:7.1f} ms;"
                      f" received {result['received']} of {options['count']}, {result['duplicates']} duplicates,"
                      f" {result['acknowledged']} acknowledged, {result['retransmitted']} packets sent again",
                      file=out, flush=True)
                for line in describe_cpu(result["cpu_us"], work, floor_per_message(work, layers), options["senders"]):
                    print(line, file=out, flush=True)
            if len(rates) > 1:
                median = statistics.median(rates)
                print(f"  mean delay {delay:5.1f} ms/hop, median of {len(rates)} runs: {median:7.1f} messages/s"
                      f" ({median / floor:.0%} of the floor)", file=out, flush=True)
    finally:
        await net.stop()


def run_command(options, program, bench, args=None, out=None):
    """
    Parse ``args`` into ``options`` and run ``bench(reactor, options, out)``
    under a reactor; what every benchmark command's ``main`` does.

    :returns: the exit code (2 for a usage error, said with ``program``'s name).
    """
    out = out or sys.stdout
    try:
        options.parseOptions(sys.argv[1:] if args is None else args)
    except usage.UsageError as e:
        print(f"{program}: {e}\n\n{options}", file=sys.stderr)
        return 2
    except SystemExit as e:
        return e.code or 0
    try:
        react(lambda reactor: ensureDeferred(bench(reactor, options, out)))
    except SystemExit as e:
        return e.code or 0
    return 0


def main(args=None, out=None):
    """Run the benchmark; returns the exit code."""
    return run_command(BenchOptions(), "nym-client bench", _bench, args, out)


if __name__ == "__main__":
    sys.exit(main())

