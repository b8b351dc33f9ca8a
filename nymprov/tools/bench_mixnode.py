"""
The mix node benchmark behind ``nym-mixnode bench``.

It prints, from one run: the X25519 cost, the forward-hop unwrap-only rate
of one core, and whole-node forward ingest: a load generator process
streams frames over loopback TCP into a real mix node (its unwrap workers,
replay cache and sender), which forwards them without delay to a sink
process that reads and forgets.  The ingest is compared with the unwrap-only
rate of every core the node uses (the reactor's and its workers'), with the
CPU each of them spent per packet.  Figures are medians of several runs, and
the unwrap-only rate is measured before and after them, because these
machines are shared and noisy.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from nymprov.tools.bench import measure_unwrap
from nymprov.tools.bench_packets import (
    Progress,
    dropped_counts,
    generate_packets,
    process_cpu_seconds,
    start_generator,
)


def _start_sink(workdir):
    port_file = os.path.join(workdir, "sink.port")
    sink = subprocess.Popen([sys.executable, "-c", "import sys; from nymprov.tools.bench_packets import _sink; "
                             "_sink(sys.argv[1])", port_file])
    deadline = time.monotonic() + 30
    while not os.path.exists(port_file):
        if time.monotonic() > deadline or sink.poll() is not None:
            sink.kill()
            raise RuntimeError("the sink did not start")
        time.sleep(0.01)
    with open(port_file) as f:
        return sink, int(f.read())


async def _one_run(reactor, args, config, topology, paths):
    """Ingest every packet once into a fresh mix node; :returns: this run's figures."""
    from twisted.internet.task import deferLater

    from nymprov.mixnode.service import MixNodeService

    # A fresh replay cache: the same packets again would all be replays.
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(config.replay_db_path + suffix):
            os.unlink(config.replay_db_path + suffix)
    mix = MixNodeService(config, reactor, topology=topology)
    mix.startService()
    generator = None
    try:
        await mix.when_started()
        if mix.unwrapper is not None:
            while len(mix.unwrapper.workers) < config.unwrap_workers:
                await deferLater(reactor, 0.01, lambda: None)
        port = mix.mix_ports[0].getHost()
        generator = start_generator(port.host, port.port, paths)
        counters = mix.counters
        deadline = time.perf_counter() + args.timeout
        while counters.get("packets.received", "mix") == 0:
            if time.perf_counter() > deadline:
                raise RuntimeError("the load generator sent nothing")
            await deferLater(reactor, 0.002, lambda: None)
        workers = [w.transport.pid for w in mix.unwrapper.workers] if mix.unwrapper is not None else []
        start, start_cpu, start_times = time.perf_counter(), time.thread_time(), os.times()
        start_workers = sum(process_cpu_seconds(pid) for pid in workers)
        progress = Progress("packets forwarded", args.packets)
        while time.perf_counter() < deadline:
            done = counters.get("packets.forwarded") + sum(dropped_counts(counters).values())
            progress.update(done)
            if done >= args.packets:
                break
            await deferLater(reactor, 0.005, lambda: None)
        elapsed = time.perf_counter() - start
        end_times = os.times()
        forwarded = counters.get("packets.forwarded")
        if not forwarded:
            raise RuntimeError(f"nothing was forwarded: {counters.snapshot()}")
        return {
            "pps": forwarded / elapsed,
            "forwarded": forwarded,
            "dropped": dropped_counts(counters),
            "wall_us": elapsed * 1e6 / forwarded,
            "reactor_us": (time.thread_time() - start_cpu) * 1e6 / forwarded,
            "process_us": (end_times.user + end_times.system - start_times.user - start_times.system)
            * 1e6 / forwarded,
            "workers_us": (sum(process_cpu_seconds(pid) for pid in workers) - start_workers) * 1e6 / forwarded,
            "batches": (mix.unwrapper.batches_in_workers, mix.unwrapper.batches_here)
            if mix.unwrapper is not None else None,
        }
    finally:
        if generator is not None:
            generator.kill()
            generator.wait()
        if mix.running:
            await mix.stopService()


async def _node_benchmark(reactor, args, figures):
    from nymprov.keys import load_or_create_keys
    from nymprov.mixnode.config import MixNodeConfig
    from nymprov.sphinx import KeyPair, encode_address
    from nymprov.topology import ProviderNode, Topology

    workdir = tempfile.mkdtemp(prefix="nymprov-mixbench-")
    sink = None
    try:
        sink, sink_port = _start_sink(workdir)
        sink_key = KeyPair.generate()
        topology = Topology(providers=[ProviderNode(bytes(32), sink_key.public_bytes, "127.0.0.1", sink_port,
                                                    "127.0.0.1", 1)])
        data_dir = os.path.join(workdir, "mix")
        os.mkdir(data_dir, 0o700)
        keys = load_or_create_keys(data_dir)
        settings = dict(data_dir=data_dir, mix_listen=["tcp:0:interface=127.0.0.1"], stats_interval=0,
                        max_delayed=max(args.packets, 1))
        if args.unwrap_workers is not None:
            settings["unwrap_workers"] = args.unwrap_workers
        config = MixNodeConfig(**settings)
        print(f"generating {args.packets} packets in 2 processes ...", flush=True)
        # The bound port is not known yet, and need not be: a hop's address
        # is read by the node before it, and the generator sends to the
        # mix directly.
        route = [(encode_address("127.0.0.1", 1), keys.sphinx.public_bytes),
                 (encode_address("127.0.0.1", sink_port), sink_key.public_bytes)]
        paths = generate_packets(workdir, args.packets, route, [bytes(32)], 2,
                                 Progress("packets generated", args.packets))
        runs = []
        for number in range(args.runs):
            print(f"run {number + 1} of {args.runs} ...", flush=True)
            runs.append(await _one_run(reactor, args, config, topology, paths))
        figures["runs"] = runs
        figures["workers"] = config.unwrap_workers
    finally:
        if sink is not None:
            sink.kill()
            sink.wait()
        shutil.rmtree(workdir, ignore_errors=True)


def report(figures):
    """Print the figures the way the closing notes quote them."""
    x, u = figures["x25519_us"], figures["unwrap_us"]
    one_core = 1e6 / u
    print()
    print(f"X25519 (libsodium)          {x:8.1f} us/op")
    print(f"forward-hop unwrap only     {u:8.1f} us/packet  {one_core:9.0f} packets/s on one core"
          f"  ({u / x:.2f} x X25519)")
    if "runs" not in figures:
        return
    runs, workers = figures["runs"], figures["workers"]
    cores = 1 + workers
    capacity = cores * one_core
    print(f"cores the node uses         reactor + {workers} unwrap worker(s): unwrap-only {capacity:9.0f} packets/s")
    rates = [run["pps"] for run in runs]
    median = statistics.median(rates)
    print(f"whole-node forward ingest  {median:9.0f} packets/s median of {len(runs)} runs"
          f" ({', '.join(f'{r:.0f}' for r in rates)}): {median / capacity:.0%} of the unwrap-only rate"
          f" of {cores} core(s), {median / one_core:.0%} of one core's")
    for label, key in (("wall", "wall_us"), ("reactor thread CPU", "reactor_us"),
                       ("node process CPU (all threads)", "process_us"), ("unwrap workers' CPU", "workers_us")):
        print(f"  per packet, {label}: {statistics.median(run[key] for run in runs):.1f} us")
    last = runs[-1]
    if last["batches"] is not None:
        print(f"  batches unwrapped (last run): {last['batches'][0]} in workers, {last['batches'][1]} on the reactor")
    print(f"  forwarded {last['forwarded']} (last run); dropped: {last['dropped'] or 'none'}")


def main(argv=None):
    """Entry point of ``nym-mixnode bench``."""
    parser = argparse.ArgumentParser(prog="nym-mixnode bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--packets", type=int, default=60_000, help="packets per ingest run (default 60000)")
    parser.add_argument("--runs", type=int, default=3, help="ingest runs for the median (default 3)")
    parser.add_argument("--rounds", type=int, default=5, help="unwrap-only rounds for the medians (default 5)")
    parser.add_argument("--per-round", type=int, default=2000, help="packets per unwrap-only round (default 2000)")
    parser.add_argument("--timeout", type=float, default=600.0, help="give up on a run after this many seconds")
    parser.add_argument("--unwrap-workers", type=int, default=None,
                        help="the node's unwrap worker processes (default: the mix node's default)")
    parser.add_argument("--unwrap-only", action="store_true", help="skip the whole-node part")
    args = parser.parse_args(argv)

    figures = {}
    unwrap, x25519 = measure_unwrap(args.rounds, args.per_round, forward=True)
    if not args.unwrap_only:
        from twisted.internet.defer import ensureDeferred
        from twisted.internet.task import react

        try:
            react(lambda reactor: ensureDeferred(_node_benchmark(reactor, args, figures)))
        except SystemExit as e:
            if e.code:
                raise
        after_unwrap, after_x25519 = measure_unwrap(args.rounds, args.per_round, forward=True)
        unwrap += after_unwrap
        x25519 += after_x25519
    figures["unwrap_us"] = statistics.median(unwrap)
    figures["x25519_us"] = statistics.median(x25519)
    report(figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
