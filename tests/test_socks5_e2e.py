"""
The SOCKS5 port and the ``socks5`` backend end to end through an
in-process mixnet: ``curl --socks5-hostname`` fetches over TLS (a test
CA) from a local HTTPS server.
"""

import hashlib
import os
import shutil

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web.static import File

from nymprov.client import ClientKeys, NymClient
from nymprov.client.socks5.server import Socks5Factory
from nymprov.client.socks5.streams import MixStreams

from tests.socks_support import listen_https, make_test_ca, write_policy
from tests.test_e2e_backends import InProcessMixnet

MARKER = b"NYMPROV-PLAINTEXT-MARKER-"


class Socks5EndToEndTests(TestCase):
    timeout = 240

    async def _setup(self, size, policy_lines=None):
        curl = shutil.which("curl")
        if curl is None:
            raise SkipTest("curl is not installed")
        self.curl = curl
        directory = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(directory, "site"))
        body = MARKER + os.urandom(size - len(MARKER))
        with open(os.path.join(directory, "site", "file.bin"), "wb") as f:
            f.write(body)
        self.digest = hashlib.sha256(body).hexdigest()
        self.ca, cert, key = make_test_ca(directory)
        listening = await listen_https(self, File(os.path.join(directory, "site")), cert, key)
        self.https_port = listening.getHost().port
        if policy_lines is None:
            policy_lines = [f"localhost {self.https_port}", f"127.0.0.1 {self.https_port}"]
        policy = write_policy(directory, policy_lines)
        self.net = net = InProcessMixnet(self, "socks5", [f"policy={policy}"])
        await net.start()
        client = NymClient(ClientKeys.generate(), net.topology, net.home_node.identity, reactor=reactor,
                           mean_delay=0.0, pull_interval=0.1, shaped=False, loop_rate=0)
        await client.start()
        self.addCleanup(client.stop)
        self.streams = MixStreams(client, net.service_node.identity, reactor, rto=2.0)
        self.addCleanup(self.streams.close)
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Socks5Factory(self.streams, reactor))
        self.addCleanup(port.stopListening)
        self.socks_port = port.getHost().port
        self.directory = directory

    def _curl(self, url, out, *extra):
        return getProcessOutputAndValue(self.curl, [
            "-sS", "--max-time", "200", "--socks5-hostname", f"127.0.0.1:{self.socks_port}",
            "--cacert", self.ca, "-o", out, *extra, url], env=dict(os.environ))

    async def test_fetch_over_tls(self):
        """1 MiB arrives byte-identical; the provider's files hold no plaintext of it."""
        await self._setup(1024 * 1024)
        out = os.path.join(self.directory, "got.bin")
        stdout, stderr, code = await self._curl(f"https://localhost:{self.https_port}/file.bin", out)
        self.assertEqual(code, 0, stderr)
        with open(out, "rb") as f:
            self.assertEqual(hashlib.sha256(f.read()).hexdigest(), self.digest)
        backend = self.net.services["service"].backend
        self.assertGreater(backend.counters.get("socks5.streams_opened"), 0)
