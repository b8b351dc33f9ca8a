"""End-to-end benchmark: messages/s and latency percentiles through a local testnet."""

import struct
import sys
import tempfile
import time

from twisted.internet.defer import ensureDeferred, gatherResults
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
        ["count", "n", 200, "messages per run", int],
        ["size", "s", 1000, "bytes per message (one fragment up to 1545)", int],
        ["delays", None, "0,50", "mean per-hop delays to try, in ms, comma-separated"],
        ["dir", None, None, "testnet directory [default: a new temporary one]"],
        ["send-rate", None, None, "λ_P of the clients, packets per second [the client default]", float],
    ]
    optFlags = [["unshaped", None, "clients send each packet at once (observable; the old behaviour)"]]


def percentile(values, fraction):
    """The ``fraction`` quantile of ``values`` (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


def shaping(options):
    """Client keyword arguments for the shaping the options ask for."""
    from nymprov.client.stream import DEFAULT_SEND_RATE

    if options["unshaped"]:
        return {"shaped": False}
    return {"shaped": True, "send_rate": options["send-rate"] or DEFAULT_SEND_RATE}


def describe_shaping(shaping):
    """One line saying whether the clients shaped their sending."""
    if not shaping["shaped"]:
        return "shaping OFF (unshaped clients: every packet leaves at once, observable)"
    return f"shaping ON: λ_P = {shaping['send_rate']:g} packets/s per client"


async def run_once(reactor, net, count, size, mean_delay_ms, shaping=None):
    """
    Send ``count`` messages from a client of provider 1 to one of provider 2.

    :param dict shaping: client keyword arguments (``shaped``, ``send_rate``).
    :returns: a dict: ``messages_per_second``, ``p50_ms``, ``p95_ms``, ``p99_ms``.
    """
    from nymprov.client import ClientKeys, NymClient

    first, second = net.topology.providers
    clients = [NymClient(ClientKeys.generate(), net.topology, p.identity, reactor=reactor,
                         mean_delay=mean_delay_ms / 1000.0, pull_interval=PULL_INTERVAL, **(shaping or {}))
               for p in (first, second)]
    for client in clients:
        await client.start()
    alice, bob = clients
    try:
        padding = bytes(max(0, size - _STAMP.size))
        started = time.monotonic()
        sends = [alice.send(bob.address, _STAMP.pack(time.monotonic(), i) + padding) for i in range(count)]
        latencies = []
        for _ in range(count):
            message = await bob.inbox.get()
            sent_at, _index = _STAMP.unpack_from(message.data)
            latencies.append(time.monotonic() - sent_at)
        elapsed = time.monotonic() - started
        await gatherResults(sends)
    finally:
        for client in clients:
            await client.stop()
    return {
        "messages_per_second": count / elapsed,
        "p50_ms": 1000 * percentile(latencies, 0.50),
        "p95_ms": 1000 * percentile(latencies, 0.95),
        "p99_ms": 1000 * percentile(latencies, 0.99),
    }


async def _bench(reactor, options, out):
    from nymprov.tools.testnet import Testnet

    directory = options["dir"] or tempfile.mkdtemp(prefix="nym-bench-")
    net = Testnet(directory, layers=3, per_layer=1, providers=2, reactor=reactor)
    await net.start()
    try:
        print(f"end to end through 3 layers and 2 providers on loopback; {options['count']} messages of"
              f" {options['size']} bytes, client A (provider 1) to B (provider 2)", file=out)
        kwargs = shaping(options)
        print(f"  {describe_shaping(kwargs)}", file=out)
        for delay in [float(d) for d in options["delays"].split(",")]:
            result = await run_once(reactor, net, options["count"], options["size"], delay, kwargs)
            print(f"  mean delay {delay:5.1f} ms/hop: {result['messages_per_second']:7.1f} messages/s,"
                  f" latency p50 {result['p50_ms']:7.1f} ms, p99 {result['p99_ms']:7.1f} ms",
                  file=out, flush=True)
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

