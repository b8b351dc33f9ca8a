"""
End-to-end benchmark: the capacity of a local testnet.  Messages/s and
latency percentiles from client A (provider 1) to client B (provider 2),
with the CPU each node spent per message, against the floor: the Sphinx
work one message costs across all its hops (its packet and its SURB-ACK),
at unwrap costs measured in the same run.
"""

import os
import statistics
import struct
import sys
import tempfile
import time

from twisted.internet.defer import DeferredList, TimeoutError as NoMessage, ensureDeferred
from twisted.internet.task import react
from twisted.python import usage

_STAMP = struct.Struct(">dI")  # send time, index
#: Seconds between the clients' pulls.  Each pull asks for a padded
#: answer of 64 slots (~140 KB), so pulling much more often makes the
#: benchmark measure its own pulls.
PULL_INTERVAL = 0.2


class BenchOptions(usage.Options):
    synopsis = "Usage: nym-client bench [options]"
    optParameters = [
        ["count", "n", 10_000, "messages per run", int],
        ["size", "s", 1000, "bytes per message (one fragment up to 1545)", int],
        ["delays", None, "0", "mean per-hop delays to try, in ms, comma-separated"],
        ["window", "w", 256, "messages sent and not yet received at most (the offered load)", int],
        ["dir", None, None, "testnet directory [default: a new temporary one]"],
        ["send-rate", None, None, "shape the clients' sending at this λ_P, packets per second"
                                  " [default: unshaped, to measure the network]", float],
    ]
    optFlags = [["unshaped", None, "clients send each packet at once (the default without --send-rate)"]]


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

    total = process_cpu_seconds(pid)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        total += process_cpu_seconds(int(entry))
            except (OSError, ValueError, IndexError):
                pass  # gone meanwhile
    return total


def cpu_snapshot(net):
    """:returns: ``{name: CPU seconds}`` of every testnet node, and of this process as ``clients``."""
    snapshot = {name: cpu_seconds(node.pid) for name, node in net.nodes.items() if node.pid}
    times = os.times()
    snapshot["clients (this process)"] = times.user + times.system
    return snapshot


async def run_once(reactor, net, count, size, mean_delay_ms, shaping=None, window=256):
    """
    Send ``count`` messages from a client of provider 1 to one of provider 2,
    at most ``window`` of them sent and not yet received at a time.

    :param dict shaping: client keyword arguments (``shaped``, ``send_rate``).
    :returns: a dict: ``messages_per_second``, ``p50_ms``, ``p95_ms``,
        ``p99_ms``, ``received`` (distinct messages), ``duplicates``, and
        ``cpu_us``: microseconds of CPU per message by node.
    """
    from nymprov.client import ClientKeys, NymClient

    first, second = net.topology.providers
    # Inboxes are drained (a full batch is pulled again at once), so that
    # pulls keep up with the load instead of measuring the pull interval.
    clients = [NymClient(ClientKeys.generate(), net.topology, p.identity, reactor=reactor,
                         mean_delay=mean_delay_ms / 1000.0, pull_interval=PULL_INTERVAL, pull_drain=True,
                         **(shaping or {}))
               for p in (first, second)]
    for client in clients:
        await client.start()
    alice, bob = clients
    sends = []
    try:
        padding = bytes(max(0, size - _STAMP.size))

        def send(index):
            sends.append(alice.send(bob.address, _STAMP.pack(time.monotonic(), index) + padding))

        before = cpu_snapshot(net)
        started = time.monotonic()
        for index in range(min(window, count)):
            send(index)
        next_index = min(window, count)
        latencies, seen, duplicates = [], set(), 0
        while len(seen) < count:
            # A message lost for good would hold the window, and the run,
            # for ever: after a quiet minute the run ends with what came.
            got = bob.inbox.get()
            try:
                message = await got.addTimeout(QUIET_LIMIT, reactor)
            except NoMessage:
                break
            sent_at, index = _STAMP.unpack_from(message.data)
            if index in seen:
                duplicates += 1
                continue
            seen.add(index)
            latencies.append(time.monotonic() - sent_at)
            if next_index < count:
                send(next_index)
                next_index += 1
        elapsed = time.monotonic() - started
        after = cpu_snapshot(net)
        if not seen:
            raise RuntimeError(f"no message arrived within {QUIET_LIMIT:g} s")
        if len(seen) == count:
            # Every message arrived: their ACKs follow at once.
            await DeferredList(sends, consumeErrors=True)
    finally:
        for client in clients:
            await client.stop()
    return {
        "messages_per_second": len(seen) / elapsed,
        "p50_ms": 1000 * percentile(latencies, 0.50),
        "p95_ms": 1000 * percentile(latencies, 0.95),
        "p99_ms": 1000 * percentile(latencies, 0.99),
        "received": len(seen),
        "duplicates": duplicates,
        "cpu_us": {name: (after[name] - before[name]) * 1e6 / len(seen) for name in after if name in before},
    }


def measure_floor(rounds=3, per_round=1000):
    """
    :returns: ``(forward-hop µs, final-hop µs, X25519 µs)``, medians,
        measured in this process.
    """
    from nymprov.tools.bench import measure_unwrap

    forward, x25519 = measure_unwrap(rounds, per_round, forward=True)
    final, more_x25519 = measure_unwrap(rounds, per_round)
    return statistics.median(forward), statistics.median(final), statistics.median(x25519 + more_x25519)


def describe_floor(net, forward_us, final_us, x25519_us, cores):
    """
    The floor's lines, and the floor in messages/s: a message is its packet
    (one forward hop per mix layer, a final hop at the recipient's
    provider) and its SURB-ACK (the same back to the sender's provider);
    the sender's provider only relays the packet (the Nym route).
    """
    layers = len(net.topology.layers)
    per_message = 2 * (layers * forward_us + final_us)
    floor = cores * 1e6 / per_message
    lines = [
        f"  X25519 {x25519_us:.1f} us; forward-hop unwrap {forward_us:.1f} us ({forward_us / x25519_us:.2f} x),"
        f" final-hop unwrap {final_us:.1f} us ({final_us / x25519_us:.2f} x)",
        f"  floor: a message is its packet and its SURB-ACK, each {layers} forward hops and a final hop:"
        f" {per_message:.0f} us of Sphinx work; {cores} core(s) allow {floor:.0f} messages/s",
    ]
    return lines, floor


async def _bench(reactor, options, out):
    from nymprov.tools.testnet import Testnet

    cores = os.cpu_count() or 1
    forward_us, final_us, x25519_us = measure_floor()
    directory = options["dir"] or tempfile.mkdtemp(prefix="nym-bench-")
    net = Testnet(directory, layers=3, per_layer=1, providers=2, reactor=reactor,
                  extra_arguments={"provider-1": RAISED_LIMITS, "provider-2": RAISED_LIMITS})
    await net.start()
    try:
        print(f"end to end through 3 layers and 2 providers on loopback; {options['count']} messages of"
              f" {options['size']} bytes, client A (provider 1) to B (provider 2), at most"
              f" {options['window']} in flight; providers' send and ACK limits raised", file=out)
        kwargs = shaping(options)
        print(f"  {describe_shaping(kwargs)}", file=out)
        lines, floor = describe_floor(net, forward_us, final_us, x25519_us, cores)
        for line in lines:
            print(line, file=out)
        for delay in [float(d) for d in options["delays"].split(",")]:
            result = await run_once(reactor, net, options["count"], options["size"], delay, kwargs,
                                    options["window"])
            rate = result["messages_per_second"]
            print(f"  mean delay {delay:5.1f} ms/hop: {rate:7.1f} messages/s ({rate / floor:.0%} of the floor),"
                  f" latency p50 {result['p50_ms']:7.1f} ms, p99 {result['p99_ms']:7.1f} ms;"
                  f" received {result['received']} of {options['count']}, {result['duplicates']} duplicates",
                  file=out, flush=True)
            cpu = result["cpu_us"]
            print("    CPU per message: " + ", ".join(f"{name} {us:.0f} us" for name, us in sorted(cpu.items()))
                  + f"; all {sum(cpu.values()):.0f} us (the floor's Sphinx work:"
                  f" {cores * 1e6 / floor:.0f} us)", file=out, flush=True)
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

