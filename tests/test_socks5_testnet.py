"""
A browser's path, process for process: ``curl --socks5-hostname`` through
``nym-client run --socks5`` and a 3-layer testnet (mix nodes, the client's
provider and the ``socks5`` service provider, each its own process on
loopback) to a local HTTPS server with its own test CA.
"""

import base64
import hashlib
import os
import re
import shutil
import struct
import zlib

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web.static import File

from nymprov.tools.testnet import Testnet
from tests.socks_support import listen_https, make_test_ca, write_policy
from tests.support import wait_for
from tests.test_client_cli import nym_client, start_running_client

MARKER = b"NYMPROV-TESTNET-PLAINTEXT-"
_SOCKS = re.compile(rb"SOCKS5 on 127\.0\.0\.1:(\d+)")


class SocksThroughTestnet(TestCase):
    """What a person does with the README's browse tour, checked byte for byte."""

    timeout = 900

    async def start(self, extra_arguments=None):
        curl = shutil.which("curl")
        if curl is None:
            raise SkipTest("curl is not installed")
        self.curl = curl
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(self.dir, "site"))
        self.ca, cert, key = make_test_ca(self.dir)
        self.cert_pem = cert
        https = await listen_https(self, File(os.path.join(self.dir, "site")), cert, key)
        self.https_port = https.getHost().port
        policy = write_policy(self.dir, [f"localhost {self.https_port}", f"127.0.0.1 {self.https_port}"])
        net = Testnet(os.path.join(self.dir, "net"), layers=3, per_layer=1, providers=1, mean_delay_ms=5,
                      socks5_policy=policy, extra_arguments=extra_arguments)
        self.net = net
        self.addCleanup(net.stop)
        await net.start()
        config = net.client_config_paths[0]
        out, err, code = await nym_client("init", "--config", config)
        self.assertEqual(code, 0, err)
        client_dir = os.path.join(os.path.dirname(config), "client-1")
        with open(os.path.join(net.directory, "socks5-service")) as f:
            service = f.read().strip()
        self.assertEqual(service, net.socks5_service)
        running = start_running_client(self, "--data-dir", client_dir, "--api-listen",
                                       "tcp:0:interface=127.0.0.1", "--socks5", "127.0.0.1:0",
                                       "--service", service)
        await wait_for(lambda: _SOCKS.search(running.output) or running.ended.called, "the SOCKS5 port",
                       limit=60)
        self.assertFalse(running.ended.called, running.output)
        self.socks_port = int(_SOCKS.search(running.output).group(1))

    def site_file(self, name, size):
        body = MARKER + os.urandom(size - len(MARKER))
        with open(os.path.join(self.dir, "site", name), "wb") as f:
            f.write(body)
        return hashlib.sha256(body).hexdigest()

    async def fetch(self, name):
        """:returns: the SHA-256 of what curl fetched through the mixnet."""
        out = os.path.join(self.dir, f"got-{name}")
        _, err, code = await getProcessOutputAndValue(self.curl, [
            "-sS", "--max-time", "600", "--socks5-hostname", f"127.0.0.1:{self.socks_port}",
            "--cacert", self.ca, "-o", out, f"https://localhost:{self.https_port}/{name}"],
            env=dict(os.environ))
        self.assertEqual(code, 0, err)
        with open(out, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()

    def assert_no_plaintext_at_the_provider(self):
        """TLS ran end to end: the marker is in no file of the service provider."""
        node = self.net.nodes["socks5-1"]
        paths = [node.log_path] + [os.path.join(root, name) for root, _, names in os.walk(node.data_dir)
                                   for name in names]
        for path in paths:
            with open(path, "rb") as f:
                self.assertNotIn(MARKER, f.read(), path)

    async def test_ten_mib_and_twenty_at_once(self):
        """10 MiB byte-identical, then 20 concurrent downloads all complete."""
        await self.start()
        digest = self.site_file("big.bin", 10 * 1024 * 1024)
        self.assertEqual(await self.fetch("big.bin"), digest)
        digests = {f"small-{i}.bin": self.site_file(f"small-{i}.bin", 128 * 1024) for i in range(20)}
        got = await gatherResults([Deferred.fromCoroutine(self.fetch(name)) for name in digests])
        self.assertEqual(got, list(digests.values()))
        self.assert_no_plaintext_at_the_provider()

    async def test_ten_mib_with_five_percent_dropped(self):
        """A mix node that drops 5% of what it should forward (--fault-drop): still byte-identical."""
        await self.start({"mix-2-1": ["--fault-drop", "0.05"]})
        digest = self.site_file("big.bin", 10 * 1024 * 1024)
        self.assertEqual(await self.fetch("big.bin"), digest)
        with open(self.net.nodes["mix-2-1"].log_path, "rb") as f:
            self.assertIn(b"FAULT", f.read().upper())

    async def test_chromium_loads_a_page(self):
        """
        Headless Chromium with ``--proxy-server=socks5://...`` loads an
        HTTPS page with an image, a stylesheet and a script through the
        testnet: the script writes into the page what it saw rendered, and
        the dumped DOM says so.
        """
        chromium = os.environ.get("NYMPROV_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
        if chromium is None:
            raise SkipTest("no chromium (Debian's chromium package; .ci/run installs it, or set NYMPROV_CHROMIUM)")
        await self.start()
        site = os.path.join(self.dir, "site")
        pages = {
            "index.html": b'<!doctype html><html><head><link rel="stylesheet" href="style.css">'
                          b'<script src="app.js"></script></head><body><h1>through the mixnet</h1>'
                          b'<img id="picture" src="picture.png"></body></html>',
            "style.css": b"body { background-color: rgb(1, 2, 3); }",
            "app.js": b'window.addEventListener("load", function () {'
                      b' var picture = document.getElementById("picture");'
                      b' var result = document.createElement("p"); result.id = "result";'
                      b' result.textContent = "image " + picture.naturalWidth + "x" + picture.naturalHeight'
                      b' + " background " + getComputedStyle(document.body).backgroundColor;'
                      b' document.body.appendChild(result); });',
            "picture.png": _png(7, 5),
        }
        for name, body in pages.items():
            with open(os.path.join(site, name), "wb") as f:
                f.write(body)
        public_key = x509.load_pem_x509_certificate(self.cert_pem).public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        spki = base64.b64encode(hashlib.sha256(public_key).digest()).decode()
        out, err, code = await getProcessOutputAndValue(chromium, [
            "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", f"--user-data-dir={os.path.join(self.dir, 'chromium')}",
            f"--proxy-server=socks5://127.0.0.1:{self.socks_port}",
            # Chromium sends loopback around its proxy unless told not to.
            "--proxy-bypass-list=<-loopback>",
            # Trusts the test server's key only, not any certificate.
            f"--ignore-certificate-errors-spki-list={spki}",
            "--dump-dom", f"https://localhost:{self.https_port}/index.html"], env=dict(os.environ))
        self.assertEqual(code, 0, err[-3000:])
        self.assertIn(b"<h1>through the mixnet</h1>", out, err[-3000:])
        self.assertIn(b'<p id="result">image 7x5 background rgb(1, 2, 3)</p>', out, err[-3000:])
        # It went through the mixnet: the service provider opened the streams (its stats at stop).
        await self.net.stop()
        with open(self.net.nodes["socks5-1"].log_path) as f:
            opened = re.findall(r"'socks5\.streams_opened': (\d+)", f.read())
        self.assertTrue(opened and int(opened[-1]) >= 1, opened)


def _png(width, height):
    """A grey ``width`` x ``height`` PNG (8-bit greyscale): what an image needs, written out."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    rows = b"".join(b"\x00" + b"\x80" * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
