"""
The provider benchmark behind ``nym-provider bench``.

It prints, from one run and one process: the X25519 cost, unwrap-only
packets/s, whole-node ingest packets/s (a separate load generator process
streams frames over loopback TCP through unwrap into the SQLite store),
pull-and-ack messages/s over TLS, and resident memory while ingesting.
Figures are medians of several rounds and ratios to the X25519 cost
measured in the same process, because these machines are shared and noisy.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

from nymprov.tools.bench_packets import CLIENTS, Progress, dropped_counts, generate_packets, start_generator


# -- unwrap only ---------------------------------------------------------------


def measure_unwrap(rounds, per_round, forward=False):
    """
    :param forward: measure a forward hop (a mix node's) instead of a final
        hop with plaintext recovery (a provider's).
    :returns: per-round microseconds per unwrap, and per-round X25519
        microseconds measured alongside.
    """
    from nacl.bindings import crypto_scalarmult

    from nymprov.sphinx import Destination, KeyPair, Node, build_packet, encode_address, process_packet

    key = KeyPair.generate()
    route = [Node(encode_address("127.0.0.1", 1789), key.public_bytes)]
    if forward:
        route.append(Node(encode_address("127.0.0.1", 1790), KeyPair.generate().public_bytes))
    packets = [
        build_packet(b"x" * 2048, route, [0] * len(route), Destination(bytes(32), bytes(16)))
        for _ in range(per_round)
    ]
    points = [KeyPair.generate().public_bytes for _ in range(per_round)]
    unwrap, x25519 = [], []
    progress = Progress("unwrap rounds", rounds)
    for round_number in range(rounds):
        progress.update(round_number)
        start = time.perf_counter()
        for packet in packets:
            hop = process_packet(packet, key)
            if not forward:
                hop.message()
        unwrap.append((time.perf_counter() - start) / per_round * 1e6)
        start = time.perf_counter()
        secret = key.private_bytes
        for point in points:
            crypto_scalarmult(secret, point)
        x25519.append((time.perf_counter() - start) / per_round * 1e6)
    return unwrap, x25519


# -- the whole node --------------------------------------------------------------


def _rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _worker_peak_rss_mib(pid):
    """:returns: the peak resident memory of process ``pid``, in MiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _peak_rss_mib():
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def _node_benchmark(reactor, args, figures):
    from twisted.internet.task import deferLater

    from nymprov.tools.bench_clients import pull_and_ack_all, register_clients
    from nymprov.provider.config import ProviderConfig
    from nymprov.provider.service import ProviderService

    workdir = tempfile.mkdtemp(prefix="nymprov-bench-")
    config = ProviderConfig(
        data_dir=workdir,
        db_path=os.path.join(workdir, "bench.sqlite"),
        mix_listen=["tcp:0:interface=127.0.0.1"],
        client_listen=["tcp:0:interface=127.0.0.1"],
        stats_interval=0,
        # Every benchmark client registers from 127.0.0.1.
        register_rate=CLIENTS * 2,
        store=args.store,
        db_synchronous=args.synchronous,
        **({} if args.unwrap_workers is None else {"unwrap_workers": args.unwrap_workers}),
    )
    service = ProviderService(config, reactor)
    service.startService()
    paths = []
    generator = None
    try:
        await service.when_started()
        mix_port = service.mix_ports[0].getHost()
        client_port = service.client_ports[0].getHost()
        [node_address] = service.node.own_addresses

        clients = await register_clients(reactor, client_port, service.certificate, CLIENTS)
        print(f"generating {args.packets} packets in 2 processes ...", flush=True)
        paths = await _in_thread(
            reactor, generate_packets, workdir, args.packets, [(node_address, service.keys.sphinx.public_bytes)],
            [c.address for c in clients],
            2, Progress("packets generated", args.packets),
        )

        counters = service.counters
        base_rss = _rss_mib()
        samples = []
        generator = start_generator(mix_port.host, mix_port.port, paths)
        # The clock starts with the first packet in, not with the generator's
        # interpreter start-up, and stops with the last one stored.
        deadline = time.perf_counter() + args.timeout
        while counters.get("packets.received", "mix") == 0:
            if time.perf_counter() > deadline:
                raise RuntimeError("the load generator sent nothing")
            await deferLater(reactor, 0.002, lambda: None)
        start = time.perf_counter()
        start_cpu, start_times = time.thread_time(), os.times()
        next_sample = 0
        progress = Progress("packets ingested", args.packets)
        while time.perf_counter() < deadline:
            done = counters.get("packets.delivered") + sum(dropped_counts(counters).values())
            progress.update(done)
            if done >= next_sample:
                samples.append((done, _rss_mib()))
                next_sample += max(1, args.packets // 10)
            if done >= args.packets:
                break
            await deferLater(reactor, 0.005, lambda: None)
        elapsed = time.perf_counter() - start
        end_times = os.times()
        figures["reactor_cpu_us"] = (time.thread_time() - start_cpu) * 1e6
        figures["process_cpu_us"] = (end_times.user + end_times.system - start_times.user - start_times.system) * 1e6
        figures["ingest_wall_us"] = elapsed * 1e6
        if service.unwrapper is not None:
            figures["unwrap_batches"] = (service.unwrapper.batches_in_workers, service.unwrapper.batches_here)
            figures["worker_peak_rss_mib"] = [
                _worker_peak_rss_mib(worker.transport.pid) for worker in service.unwrapper.workers
            ]
        delivered = counters.get("packets.delivered")
        figures["ingest_packets"] = delivered
        figures["ingest_pps"] = delivered / elapsed
        figures["ingest_dropped"] = dropped_counts(counters)
        figures["rss_samples"] = samples
        figures["rss_base_mib"] = base_rss

        start = time.perf_counter()
        pulled = await pull_and_ack_all(reactor, client_port, service.certificate, clients,
                                        progress=Progress("clients emptied", len(clients)))
        elapsed = time.perf_counter() - start
        figures["pulled"] = pulled
        figures["pull_ack_mps"] = pulled / elapsed
    finally:
        # Stopped whatever happened: a live store thread or generator would
        # keep the benchmark from exiting after an error.
        if generator is not None:
            generator.kill()
            generator.wait()
        if service.running:
            await service.stopService()
        for path in paths:
            os.unlink(path)
    figures["peak_rss_mib"] = _peak_rss_mib()


def _in_thread(reactor, f, *args):
    from twisted.internet.threads import deferToThreadPool

    return deferToThreadPool(reactor, reactor.getThreadPool(), f, *args)


def report(figures):
    """Print the figures the way the closing notes quote them."""
    x = figures["x25519_us"]
    u = figures["unwrap_us"]
    print()
    print(f"X25519 (libsodium)          {x:8.1f} us/op")
    print(f"final-hop unwrap only       {u:8.1f} us/packet  {1e6 / u:9.0f} packets/s  ({u / x:.2f} x X25519)")
    if "ingest_pps" in figures:
        unwrap_pps = 1e6 / u
        ingest = figures["ingest_pps"]
        print(f"whole-node ingest          {ingest:9.0f} packets/s  ({ingest / unwrap_pps:.0%} of unwrap-only)"
              f"  delivered {figures['ingest_packets']}")
        n = figures["ingest_packets"]
        print(f"  per packet: {figures['ingest_wall_us'] / n:.1f} us wall, reactor thread CPU "
              f"{figures['reactor_cpu_us'] / n:.1f} us, whole process CPU {figures['process_cpu_us'] / n:.1f} us")
        if "unwrap_batches" in figures:
            in_workers, here = figures["unwrap_batches"]
            print(f"  batches unwrapped: {in_workers} in worker processes, {here} on the reactor thread")
        if figures["ingest_dropped"]:
            print(f"  dropped: {figures['ingest_dropped']}")
        print(f"pull + ack over TLS         {figures['pull_ack_mps']:9.0f} messages/s  ({figures['pulled']} messages)")
        print(f"RSS while ingesting (MiB): base {figures['rss_base_mib']:.0f}; "
              + ", ".join(f"{n}: {r:.0f}" for n, r in figures["rss_samples"]))
        print(f"peak RSS                    {figures['peak_rss_mib']:8.0f} MiB")
        for peak in figures.get("worker_peak_rss_mib", []):
            print(f"  unwrap worker peak RSS    {peak:8.0f} MiB")


def _store_choice(text):
    if text in ("sqlite", "memory") or text.startswith(("postgresql://", "postgres://")):
        return text
    raise argparse.ArgumentTypeError("expected sqlite, memory or a postgresql:// URL")


def main(argv=None):
    """Entry point of ``nym-provider bench``."""
    parser = argparse.ArgumentParser(prog="nym-provider bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--packets", type=int, default=None,
                        help="packets to ingest (default 200000; 50000 with a postgresql:// --store)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds for the medians (default 5)")
    parser.add_argument("--per-round", type=int, default=2000, help="operations per round (default 2000)")
    parser.add_argument("--timeout", type=float, default=600.0, help="give up on ingest after this many seconds")
    parser.add_argument("--store", type=_store_choice, default="sqlite",
                        help="store to ingest into: sqlite (default), memory, or a postgresql:// URL,"
                             " which compares provider processes on SQLite and on PostgreSQL (1 and 2)")
    parser.add_argument("--synchronous", choices=("FULL", "NORMAL"), default="FULL",
                        help="SQLite synchronous setting (default FULL)")
    parser.add_argument("--unwrap-workers", type=int, default=None,
                        help="the node's unwrap worker processes (default: the provider's default)")
    parser.add_argument("--unwrap-only", action="store_true", help="skip the whole-node part")
    args = parser.parse_args(argv)
    scaleout = args.store.startswith(("postgresql://", "postgres://"))
    if args.packets is None:
        args.packets = 50_000 if scaleout else 200_000

    figures = {}
    unwrap, x25519 = measure_unwrap(args.rounds, args.per_round)
    if not args.unwrap_only:
        from twisted.internet.defer import ensureDeferred
        from twisted.internet.task import react

        def run(reactor):
            if scaleout:
                from nymprov.tools.bench_scaleout import scaleout_benchmark

                return ensureDeferred(scaleout_benchmark(reactor, args, figures))
            return ensureDeferred(_node_benchmark(reactor, args, figures))

        try:
            react(run)
        except SystemExit as e:
            if e.code:
                raise
        # Measured again after the ingest, so that the ratio compares like
        # with like on a machine whose load drifts.
        after_unwrap, after_x25519 = measure_unwrap(args.rounds, args.per_round)
        unwrap += after_unwrap
        x25519 += after_x25519
    figures["unwrap_us"] = statistics.median(unwrap)
    figures["x25519_us"] = statistics.median(x25519)
    report(figures)
    if scaleout and not args.unwrap_only:
        from nymprov.tools.bench_scaleout import report_scaleout

        report_scaleout(figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
