"""
``nym-provider bench --store postgresql://...``: ingest and pull+ack rates of
real provider processes on SQLite (one process) and on PostgreSQL (one
process, then two on one database), in one run.

Every configuration runs ``nym-provider run`` subprocesses on loopback, each
with its own ports, the same keys, plain TCP for the client API and no
unwrap workers (the processes are the parallelism).  The same pre-built
packets are streamed to them, split evenly, by one load-generator process
per provider process; ingest is timed from the first message committed to
the last, read from the database.  Then 8 concurrent pullers, spread over
the processes, empty every inbox, pulling and acking 64 at a time.
"""

import os
import re
import secrets
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from urllib.parse import quote

from nymprov.tools.bench_packets import CLIENTS, Progress, generate_packets, start_generator

#: Concurrent pull-and-ack loops.
PULLERS = 8

_LISTENING = re.compile(r"Listening on ([0-9.]+):(\d+) \((mix link|client API)")


class _Provider:
    """One ``nym-provider run`` subprocess and the ports it announced."""

    def __init__(self, args, log_path):
        self._log_path = log_path
        self._log = open(log_path, "wb")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
        self.process = subprocess.Popen([sys.executable, "-m", "nymprov", "run"] + args,
                                        stdout=self._log, stderr=subprocess.STDOUT, env=env)
        self.ports = {}

    def wait_listening(self, timeout=60.0):
        deadline = time.monotonic() + timeout
        while len(self.ports) < 2:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("provider did not start:\n" + self.log_text()[-3000:])
            for host, port, kind in _LISTENING.findall(self.log_text()):
                self.ports[kind] = (host, int(port))
            time.sleep(0.05)

    def log_text(self):
        with open(self._log_path, "rb") as log:
            return log.read().decode("utf-8", "replace")

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


class _Database:
    """Where one configuration's messages are counted."""

    def __init__(self, store, workdir, label):
        self.store = store
        self.sqlite_path = None
        self._schema = None
        if store == "sqlite":
            self.sqlite_path = os.path.join(workdir, f"{label}.sqlite")
            self.arguments = ["--store", "sqlite", "--db-path", self.sqlite_path]
        else:
            import psycopg

            # A schema of its own, dropped afterwards: runs never mix.
            self._schema = "nymprov_bench_" + secrets.token_hex(4)
            with psycopg.connect(store, autocommit=True) as connection:
                connection.execute(f"CREATE SCHEMA {self._schema}")
            joiner = "&" if "?" in store else "?"
            self.url = store + joiner + "options=" + quote(f"-csearch_path={self._schema}", safe="")
            self.arguments = ["--store", self.url]

    def stored(self):
        """:returns: how many messages are stored now (0 before the schema exists)."""
        if self.sqlite_path is not None:
            try:
                db = sqlite3.connect(f"file:{self.sqlite_path}?mode=ro", uri=True)
                try:
                    return db.execute("SELECT count(*) FROM messages").fetchone()[0]
                finally:
                    db.close()
            except sqlite3.Error:
                return 0
        import psycopg

        try:
            with psycopg.connect(self.url, autocommit=True) as connection:
                return connection.execute("SELECT coalesce(sum(messages), 0) FROM clients").fetchone()[0]
        except psycopg.errors.UndefinedTable:
            return 0

    def drop(self):
        if self._schema is not None:
            import psycopg

            with psycopg.connect(self.store, autocommit=True) as connection:
                connection.execute(f"DROP SCHEMA {self._schema} CASCADE")


def _stream_split(providers, paths):
    """Start one load generator per provider, each with its share of files."""
    generators = []
    for number, provider in enumerate(providers):
        share = paths[number::len(providers)]
        host, port = provider.ports["mix link"]
        generators.append(start_generator(host, port, share))
    return generators


async def _register(reactor, provider, keys):
    from nymprov.client import session as provider_client

    host, port = provider.ports["client API"]
    session = await provider_client.connect(reactor, host, port)
    try:
        return [await session.register(key) for key in keys]
    finally:
        session.close()


async def _pull_all(reactor, providers, clients):
    """Empty every inbox with :data:`PULLERS` loops over the providers."""
    from twisted.internet.defer import ensureDeferred, gatherResults

    from nymprov.client import session as provider_client

    queue = list(clients)
    total = [0]

    async def puller(number):
        host, port = providers[number % len(providers)].ports["client API"]
        while queue:
            address, token = queue.pop()
            session = await provider_client.connect(reactor, host, port)
            try:
                await session.authenticate(address, token)
                while True:
                    batch = await session.pull(64)
                    if not batch.messages:
                        break
                    # Awaited first: "total[0] += await ..." would read
                    # total[0] before the wait and lose other pullers' counts.
                    deleted = await session.ack(batch.lease_id)
                    total[0] += deleted
            finally:
                session.close()

    await gatherResults([ensureDeferred(puller(n)) for n in range(PULLERS)])
    return total[0]


async def _run_configuration(reactor, label, store, processes, keys, paths, packets, workdir, timeout):
    from twisted.internet.task import deferLater

    database = _Database(store, workdir, label)
    providers = []
    generators = []
    try:
        for number in range(processes):
            provider = _Provider(
                ["--data-dir", os.path.join(workdir, "data"), *database.arguments,
                 "--mix-listen", "tcp:0:interface=127.0.0.1", "--client-listen", "tcp:0:interface=127.0.0.1",
                 "--no-client-tls", "--unwrap-workers", "0", "--stats-interval", "0",
                 "--http-listen", "none", "--admin-socket", "none",
                 "--register-rate", str(CLIENTS * 4), "--lease-seconds", "300"],
                os.path.join(workdir, f"{label}-{number}.log"),
            )
            providers.append(provider)
            # One at a time: the first creates the schema.
            provider.wait_listening()
        tokens = await _register(reactor, providers[0], keys)
        generators = _stream_split(providers, paths)
        deadline = time.perf_counter() + timeout
        progress = Progress(f"{label}: packets stored", packets)
        while database.stored() == 0:
            if time.perf_counter() > deadline:
                raise RuntimeError(f"{label}: nothing was stored")
            await deferLater(reactor, 0.01, lambda: None)
        start = time.perf_counter()
        while (stored := database.stored()) < packets:
            progress.update(stored)
            if time.perf_counter() > deadline:
                raise RuntimeError(f"{label}: only {stored} of {packets} stored in time")
            await deferLater(reactor, 0.05, lambda: None)
        ingest = packets / (time.perf_counter() - start)
        clients = [(bytes(key.verify_key), token) for key, token in zip(keys, tokens)]
        start = time.perf_counter()
        pulled = await _pull_all(reactor, providers, clients)
        pull_ack = pulled / (time.perf_counter() - start)
        if database.stored():
            raise RuntimeError(f"{label}: {database.stored()} messages left after the pulls")
        return {"ingest_pps": ingest, "pull_ack_mps": pull_ack, "pulled": pulled}
    finally:
        for generator in generators:
            generator.kill()
            generator.wait()
        for provider in providers:
            provider.stop()
        database.drop()


async def scaleout_benchmark(reactor, args, figures):
    """
    Measure SQLite with one process, then PostgreSQL (``args.store``) with
    one and two; ``figures`` gets a ``(label, processes, results)`` per run.
    """
    from nacl.signing import SigningKey

    from nymprov.keys import load_or_create_keys
    from nymprov.net.tls import load_or_create_certificate
    from nymprov.sphinx import encode_address

    workdir = tempfile.mkdtemp(prefix="nymprov-bench-scaleout-")
    try:
        data_dir = os.path.join(workdir, "data")
        node_keys = load_or_create_keys(data_dir)
        load_or_create_certificate(data_dir)
        keys = [SigningKey.generate() for _ in range(CLIENTS)]
        print(f"generating {args.packets} packets in 2 processes ...", flush=True)
        # A final hop's packet does not name the node it is sent to: the
        # same packets serve every process and configuration.
        paths = generate_packets(
            workdir, args.packets, [(encode_address("127.0.0.1", 1), node_keys.sphinx.public_bytes)],
            [bytes(key.verify_key) for key in keys], 2, Progress("packets generated", args.packets),
        )
        for label, store, processes in (("sqlite", "sqlite", 1), ("postgresql", args.store, 1),
                                        ("postgresql", args.store, 2)):
            print(f"{label}, {processes} process(es) ...", flush=True)
            results = await _run_configuration(reactor, f"{label}-{processes}", store, processes, keys,
                                               paths, args.packets, workdir, args.timeout)
            figures.setdefault("scaleout", []).append((label, processes, results))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def report_scaleout(figures):
    """Print the table the closing notes quote."""
    print()
    print("store        processes   ingest packets/s   pull+ack messages/s   (plain TCP, no unwrap workers)")
    for label, processes, results in figures.get("scaleout", []):
        print(f"{label:<12} {processes:>9}   {results['ingest_pps']:>16.0f}   {results['pull_ack_mps']:>19.0f}"
              f"   ({results['pulled']} messages)")
