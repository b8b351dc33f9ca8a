"""
What the node benchmarks share: pre-built packets in files, the load
generator that streams them to a mix port, a sink that reads what a node
sends on, CPU read from ``/proc``, and progress lines.
"""

import hashlib
import multiprocessing
import os
import socket
import subprocess
import sys
import time

#: Clients the ingest packets are spread over (each gets an inbox).
CLIENTS = 64

#: Longest a long step goes without a progress line.
PROGRESS_INTERVAL = 2.0  # seconds


class Progress:
    """
    Progress lines for a long step, at most one per ``interval`` seconds
    (and the first at once), so that a run of a minute never looks hung.
    """

    def __init__(self, what, total, out=None, interval=PROGRESS_INTERVAL, clock=time.monotonic):
        self.what = what
        self.total = total
        self._out = out
        self._interval = interval
        self._clock = clock
        self._started = clock()
        self._next = self._started

    def update(self, done):
        """Report ``done`` of the total if the last line is old enough."""
        now = self._clock()
        if now < self._next:
            return
        self._next = now + self._interval
        print(f"  [{now - self._started:5.1f} s] {self.what}: {done}/{self.total}",
              file=self._out or sys.stdout, flush=True)


# -- packet generation (worker processes, before any measurement) ------------


def _generate(job):
    """
    Write ``count`` framed packets over ``route`` (``(address, public
    key)`` pairs, no delays) into ``path``.
    """
    from nymprov.sphinx import Destination, Node, build_packet
    from nymprov.wire.envelope import encode_envelope
    from nymprov.wire.frames import encode_frame

    path, count, route, clients, seed = job
    nodes = [Node(address, public) for address, public in route]
    with open(path, "wb") as out:
        for i in range(count):
            client = clients[(seed + i) % len(clients)]
            # A client's message: an envelope around ~2 KB of ciphertext.
            message = encode_envelope(hashlib.sha256(b"%d-%d" % (seed, i)).digest() * 60)
            packet = build_packet(message, nodes, [0] * len(nodes), Destination(client, bytes(16)))
            out.write(encode_frame(packet))
    return path


def generate_packets(directory, count, route, clients, workers=2, progress=None):
    """
    :param route: ``(address, public key)`` of each hop: the provider
        alone, or a mix node and the node after it.
    :param clients: the destinations, taken in turn.
    :param progress: a :class:`Progress` told of each file made.
    :returns: the files holding ``count`` frames, made by ``workers``
        processes, 2,000 frames a file at most (a progress line a file).
    """
    files = max(1, -(-count // 2000))
    share, extra = divmod(count, files)
    jobs = [
        (os.path.join(directory, f"frames-{w}.bin"), share + (1 if w < extra else 0),
         route, clients, w * count)
        for w in range(files)
    ]
    paths, made = [], 0
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        # imap keeps the files in job order.
        for path, job in zip(pool.imap(_generate, jobs), jobs):
            paths.append(path)
            made += job[1]
            if progress is not None:
                progress.update(made)
    return paths


def _sink(port_file):
    """
    A next node that reads and forgets: it listens, writes its port to
    ``port_file``, and reads each connection until it ends, one after the
    other (one node a run), until it is killed.
    """
    with socket.create_server(("127.0.0.1", 0)) as server:
        with open(port_file + ".tmp", "w") as f:
            f.write(str(server.getsockname()[1]))
        os.rename(port_file + ".tmp", port_file)
        while True:
            connection, _ = server.accept()
            with connection:
                while connection.recv(1 << 20):
                    pass


def start_generator(host, port, paths):
    """:returns: the load generator process streaming the frame files ``paths`` to ``host:port``."""
    return subprocess.Popen(
        [sys.executable, "-c", "import sys; from nymprov.tools.bench_packets import _stream; "
         "_stream(sys.argv[1], int(sys.argv[2]), sys.argv[3:])", host, str(port), *paths])


def dropped_counts(counters):
    """:returns: the ``packets.dropped.REASON`` counters of ``counters``, by name."""
    return {k: v for k, v in counters.snapshot().items() if k.startswith("packets.dropped")}


_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid):
    """:returns: user + system CPU seconds of process ``pid`` so far (Linux ``/proc``)."""
    with open(f"/proc/{pid}/stat") as f:
        # The command name may hold spaces; the fields after it do not.
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def _stream(host, port, paths):
    """The load generator: stream frame files to the mix port as fast as it reads."""
    with socket.create_connection((host, port)) as sock:
        for path in paths:
            with open(path, "rb") as f:
                while True:
                    chunk = f.read(1 << 20)
                    if not chunk:
                        break
                    sock.sendall(chunk)
        # Keep the connection until the node has read everything.
        sock.shutdown(socket.SHUT_WR)
        sock.recv(1)


