"""
``twistd -n --uid 65534 --gid 65534 nym-provider`` on a fresh data directory
(as root): the ports, one of them below 1024, are bound before privileges
are dropped, the data directory, keys and certificate belong to that user,
and the provider serves: a packet in through the mix link is pulled by a
client over TLS.
"""

import os
import shutil
import socket
import sys
import tempfile
import time

from nacl.signing import SigningKey
from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import SkipTest, TestCase

from nymprov.client import session as provider_client
from nymprov.keys import load_keys
from nymprov.net.tls import certificate_fingerprint, load_certificate
from nymprov.sphinx import Destination, Node, build_packet, encode_address
from nymprov.wire.frames import encode_frame

from tests.support import WAIT_LIMIT, wait_for
from tests.test_crash import ProviderProcess

NOBODY = 65534
# twistd, with what the standard library imports lazily loaded first: the
# interpreter may live where the user cannot read (here, under /root), and
# the node only drops privileges once it has imported its own modules.
_TWISTD = (
    "import importlib.readers, importlib.resources;"
    " from twisted.scripts.twistd import run; run()"
)


def free_low_port():
    """:returns: a loopback port below 1024 that nothing listens on."""
    for port in range(1023, 900, -1):
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            s.close()
        return port
    raise SkipTest("no free port below 1024")


class DropPrivilegesTests(TestCase):
    """twistd --uid/--gid with a fresh data directory."""

    timeout = 120

    def setUp(self):
        if os.getuid() != 0:
            raise SkipTest("binding below 1024 and switching user needs root")

    def test_fresh_data_dir(self):
        """It starts, its files are the user's, and it serves."""
        return ensureDeferred(self.fresh_data_dir())

    async def fresh_data_dir(self):
        # The user must reach the data directory: a parent it may traverse,
        # outside the checkout, whose own ancestors may be private to root
        # (a clone in a directory made by mktemp -d is).
        parent = tempfile.mkdtemp(prefix="nymprov-priv-data-")
        self.addCleanup(shutil.rmtree, parent, True)
        os.chmod(parent, 0o711)
        data_dir = os.path.join(parent, "data")
        mix_port = free_low_port()
        pidfile = os.path.join(parent, "twistd.pid")
        # A short directory for the admin socket (a UNIX socket's path has
        # room for 107 bytes), which the user may traverse.
        sockets = tempfile.mkdtemp(prefix="nymprov-priv-")
        self.addCleanup(shutil.rmtree, sockets, True)
        os.chmod(sockets, 0o711)
        admin_socket = os.path.join(sockets, "admin.sock")
        process = ProviderProcess()
        args = [sys.executable, "-c", _TWISTD, "-n", "--pidfile", pidfile,
                "--uid", str(NOBODY), "--gid", str(NOBODY), "nym-provider",
                "--data-dir", data_dir,
                "--mix-listen", f"tcp:{mix_port}:interface=127.0.0.1",
                "--client-listen", "tcp:0:interface=127.0.0.1",
                "--stats-interval", "0",
                "--http-listen", "tcp:0:interface=127.0.0.1",
                "--admin-socket", admin_socket,
                # The workers are this interpreter, which the user may not
                # be allowed to run here (it lives under /root).
                "--unwrap-workers", "0"]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
        transport = reactor.spawnProcess(process, sys.executable, args, env=env)
        self.addCleanup(lambda: process.ended.called or transport.signalProcess("KILL"))
        try:
            await wait_for(lambda: len(process.ports) == 2 or process.ended.called, "the provider to listen")
        finally:
            log = process.log.decode("utf-8", "replace")
        self.assertEqual(len(process.ports), 2, log)
        self.assertEqual(process.ports["mix link"], ("127.0.0.1", mix_port))
        for name in ("", "identity.key", "sphinx.key", "tls.key", "tls.crt", "nymprov.sqlite"):
            info = os.stat(os.path.join(data_dir, name))
            self.assertEqual((info.st_uid, info.st_gid), (NOBODY, NOBODY), name)
        # The admin socket, bound while privileged, is the user's too.
        info = os.stat(admin_socket)
        self.assertEqual((info.st_uid, info.st_gid, info.st_mode & 0o777), (NOBODY, NOBODY, 0o600))

        host, client_port = process.ports["client API"]
        fingerprint = certificate_fingerprint(load_certificate(data_dir))
        session = await provider_client.connect(reactor, host, client_port, fingerprint)
        key = SigningKey.generate()
        await session.register(key)
        keys = load_keys(data_dir)
        route = [Node(encode_address("127.0.0.1", mix_port), keys.sphinx.public_bytes)]
        packet = build_packet(b"as nobody", route, [0], Destination(bytes(key.verify_key), bytes(16)))
        link = Protocol()
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", mix_port), link)
        link.transport.write(encode_frame(packet))
        pulled = []

        async def pull():
            batch = await session.pull(1)
            pulled.extend(batch.messages)
            return bool(pulled)

        deadline = time.monotonic() + WAIT_LIMIT
        while not await pull():
            self.assertLess(time.monotonic(), deadline, "the packet was not stored")
            await deferLater(reactor, 0.02, lambda: None)
        self.assertEqual(pulled, [b"as nobody"])
        link.transport.loseConnection()
        await session.close()
        transport.signalProcess("TERM")
        await process.ended
        self.assertIn("nym-provider stopped; stats:", process.log.decode("utf-8", "replace"))
