"""
A ``nym-provider run`` subprocess for the tests that go through the user's
path: its log, the ports it announces, its counters and its memory.
"""

import ast
import time
import os
import re
import sys

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectError
from twisted.internet.protocol import ProcessProtocol, Protocol

from nymprov.net.tls import certificate_fingerprint, load_certificate

from tests.support import wait_for

_LISTENING = re.compile(r"Listening on ([0-9.]+):(\d+) \((mix link|client API)")
_STATS = re.compile(r"stats: (\{[^}]*\})")


class ProviderProcess(ProcessProtocol):
    """Collects a provider's log, the ports it announces and its stats."""

    def __init__(self):
        self.log = b""
        self.ports = {}
        self.stats = {}
        self.ended = Deferred()

    def errReceived(self, data):
        self.log += data
        text = self.log.decode("utf-8", "replace")
        for host, port, kind in _LISTENING.findall(text):
            self.ports[kind] = (host, int(port))
        found = _STATS.findall(text[-20000:])
        if found:
            self.stats = ast.literal_eval(found[-1])

    outReceived = errReceived

    def processEnded(self, reason):
        # The reason is a Failure even for a clean exit; hand on its value.
        self.ended.callback(reason.value)

    def rss_bytes(self):
        """:returns: the process's resident set size, from /proc."""
        with open(f"/proc/{self.transport.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS line")

    def fingerprint(self, data_dir):
        """:returns: the pin of the certificate the provider made."""
        return certificate_fingerprint(load_certificate(data_dir))


async def spawn_provider(testcase, *extra, data_dir=None):
    """
    Run ``python -m nymprov run`` on loopback ports until the test ends.

    :returns: ``(process, data_dir)`` once both listeners are announced.
    """
    if data_dir is None:
        data_dir = os.path.abspath(testcase.mktemp())
    process = ProviderProcess()
    args = [
        sys.executable, "-m", "nymprov", "run",
        "--data-dir", data_dir,
        "--mix-listen", "tcp:0:interface=127.0.0.1",
        "--client-listen", "tcp:0:interface=127.0.0.1",
        "--unwrap-workers", "0",
        "--http-listen", "tcp:0:interface=127.0.0.1", "--admin-socket", "none",
        *extra,
    ]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    transport = reactor.spawnProcess(process, sys.executable, args, env=env)

    def stop():
        if process.ended.called:
            return None
        transport.signalProcess("KILL")
        return process.ended

    testcase.addCleanup(stop)
    await wait_for(lambda: len(process.ports) == 2 or process.ended.called, "the provider to listen")
    if process.ended.called:
        raise AssertionError("provider exited: " + process.log.decode("utf-8", "replace"))
    return process, data_dir


class Peer(Protocol):
    """A raw peer that notices when the provider hangs up."""

    def __init__(self):
        self.closed = Deferred()
        self.closed_at = None

    def connectionLost(self, reason):
        self.closed_at = time.monotonic()
        self.closed.callback(None)


async def open_peers(host, port, count, source, first=b""):
    """
    Open ``count`` connections from ``source``; each says ``first`` and
    then nothing: a slow or stuck peer.  (A flood from an address no other
    test listens on, 127.0.0.3, takes no port another test may want.)
    """
    peers = []
    for _ in range(count):
        endpoint = TCP4ClientEndpoint(reactor, host, port, bindAddress=(source, 0))
        try:
            peer = await connectProtocol(endpoint, Peer())
        except ConnectError:
            continue
        if first:
            peer.transport.write(first)
        peers.append(peer)
    return peers
