"""
Benchmark of the Tor-like web proxy: time to first byte and throughput of
downloads through ``nym-client run --socks5`` and a testnet with a
``socks5`` service provider, beside the same downloads made directly.

``python -m nymprov.tools.bench_socks5 [--sizes 1,10] [--delays 50,0] [--runs 3]``

Downloads are made by ``curl`` (what a person would use; its
``--write-out`` timings are the figures), over plain HTTP from a local
server: TLS would add the same handshake to both columns.
"""

import os
import re
import shutil
import statistics
import sys
import tempfile

from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.python import usage

_SOCKS = re.compile(rb"SOCKS5 on 127\.0\.0\.1:(\d+)")
MIB = 1024 * 1024


class Socks5BenchOptions(usage.Options):
    synopsis = "Usage: python -m nymprov.tools.bench_socks5 [options]"
    optParameters = [
        ["sizes", None, "1,10", "download sizes in MiB, comma-separated"],
        ["delays", None, "50,0", "mean per-hop delays of the clients to try, in ms, comma-separated"],
        ["runs", None, 3, "downloads of each size per setting (medians are printed)", int],
        ["dir", None, None, "working directory [default: a new temporary one]"],
    ]


class _RunningClient(ProcessProtocol):
    """``nym-client run`` in a child; fires ``port`` with its SOCKS5 port."""

    def __init__(self, reactor, arguments):
        self.output = b""
        self.port = Deferred()
        self.ended = Deferred()
        self.process = reactor.spawnProcess(
            self, sys.executable, [sys.executable, "-m", "nymprov.cli.client", "run", *arguments],
            env=dict(os.environ))

    def outReceived(self, data):
        self.output += data
        found = _SOCKS.search(self.output)
        if found and not self.port.called:
            self.port.callback(int(found.group(1)))

    errReceived = outReceived

    def processEnded(self, reason):
        if not self.port.called:
            self.port.errback(RuntimeError(f"nym-client run ended: {self.output.decode(errors='replace')}"))
        self.ended.callback(None)

    def stop(self):
        if not self.ended.called:
            self.process.signalProcess("TERM")
        return self.ended


async def download(curl, url, socks_port=None):
    """:returns: ``(seconds to first byte, seconds in all, bytes)`` as curl measured them."""
    proxy = ["--socks5-hostname", f"127.0.0.1:{socks_port}"] if socks_port else []
    out, err, code = await getProcessOutputAndValue(curl, [
        "-sS", "--max-time", "900", "-o", os.devnull, "-w", "%{time_starttransfer} %{time_total} %{size_download}",
        *proxy, url], env=dict(os.environ))
    if code != 0:
        raise RuntimeError(f"curl failed ({code}): {err.decode(errors='replace').strip()}")
    first, total, size = out.split()
    return float(first), float(total), int(size)


def describe(label, results):
    """One line of medians: TTFB and throughput."""
    first = statistics.median(r[0] for r in results)
    throughput = statistics.median(r[2] / r[1] for r in results) / 1024
    return f"    {label:<22} TTFB {1000 * first:8.1f} ms   {throughput:9.1f} KiB/s"


async def _serve(reactor, directory, sizes):
    from twisted.internet.endpoints import TCP4ServerEndpoint
    from twisted.web.server import Site
    from twisted.web.static import File

    site = os.path.join(directory, "site")
    os.makedirs(site, exist_ok=True)
    for size in sizes:
        with open(os.path.join(site, f"{size}mib.bin"), "wb") as f:
            f.write(os.urandom(size * MIB))
    factory = Site(File(site))
    factory.noisy = False
    return await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)


async def _through_testnet(reactor, options, directory, delay, port, sizes, curl, out):
    from nymprov.tools.testnet import Testnet

    policy = os.path.join(directory, "exit-policy")
    with open(policy, "w") as f:
        f.write(f"127.0.0.1 {port}\n")
    net = Testnet(os.path.join(directory, f"net-{delay:g}"), layers=3, per_layer=1, providers=1,
                  mean_delay_ms=delay, socks5_policy=policy, reactor=reactor)
    await net.start()
    client = None
    try:
        config = net.client_config_paths[0]
        init = await getProcessOutputAndValue(sys.executable, ["-m", "nymprov.cli.client", "init", "--config", config],
                                              env=dict(os.environ))
        if init[2] != 0:
            raise RuntimeError(f"nym-client init failed: {init[1].decode(errors='replace')}")
        client = _RunningClient(reactor, ["--data-dir", os.path.join(os.path.dirname(config), "client-1"),
                                          "--api-listen", "tcp:0:interface=127.0.0.1",
                                          "--socks5", "127.0.0.1:0", "--service", net.socks5_service])
        socks_port = await client.port
        # The client's first pulls and SURB top-ups settle before timing.
        await deferLater(reactor, 2, lambda: None)
        print(f"  through the testnet, mean delay {delay:g} ms/hop:", file=out, flush=True)
        for size in sizes:
            results = [await download(curl, f"http://127.0.0.1:{port}/{size}mib.bin", socks_port)
                       for _ in range(options["runs"])]
            print(describe(f"{size} MiB", results), file=out, flush=True)
    finally:
        if client is not None:
            await client.stop()
        await net.stop()


async def _bench(reactor, options, out):
    curl = shutil.which("curl")
    if curl is None:
        raise usage.UsageError("the benchmark downloads with curl, which is not installed")
    sizes = [int(s) for s in options["sizes"].split(",")]
    delays = [float(d) for d in options["delays"].split(",")]
    directory = options["dir"] or tempfile.mkdtemp(prefix="nym-bench-socks5-")
    listening = await _serve(reactor, directory, sizes)
    port = listening.getHost().port
    print(f"downloads over HTTP from 127.0.0.1, curl, medians of {options['runs']} runs; the testnet is 3 layers"
          " of 1 mix node, the client's provider and the socks5 service provider, each a process", file=out)
    try:
        print("  direct:", file=out)
        for size in sizes:
            results = [await download(curl, f"http://127.0.0.1:{port}/{size}mib.bin")
                       for _ in range(options["runs"])]
            print(describe(f"{size} MiB", results), file=out, flush=True)
        for delay in delays:
            await _through_testnet(reactor, options, directory, delay, port, sizes, curl, out)
    finally:
        await listening.stopListening()


def main(args=None, out=None):
    """Run the benchmark; returns the exit code."""
    from nymprov.tools.bench_network import run_command

    return run_command(Socks5BenchOptions(), "bench_socks5", _bench, args, out)


if __name__ == "__main__":
    sys.exit(main())
