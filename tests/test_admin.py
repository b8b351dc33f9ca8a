"""
The admin commands (``nym-provider clients|invites|status``), run as child
processes against a provider running here, through its admin socket.
"""

import json
import os
import shutil
import stat
import sys
import tempfile

from nacl.signing import SigningKey
from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from nymprov.provider.admin import show_client
from nymprov.wire import clientapi as api
from nymprov.wire.frames import encode_frame

from tests.support import wait_for
from tests.test_integration import ProviderFixture

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class AdminTests(ProviderFixture, TestCase):
    """clients list, revoke and forget; invites list, add and remove; status."""

    timeout = 120

    async def start(self, **settings):
        # A short directory: a UNIX socket's path has room for 107 bytes.
        short = tempfile.mkdtemp(prefix="nymprov-admin-")
        self.addCleanup(shutil.rmtree, short, True)
        self.socket = os.path.join(short, "admin.sock")
        provider = await self.start_provider(admin_socket=self.socket, **settings)
        return provider

    async def admin(self, *args):
        """Run ``nym-provider ARGS --admin-socket ...``; :returns: (code, stdout text, stderr text)."""
        env = dict(os.environ, PYTHONPATH=ROOT)
        out, err, code = await getProcessOutputAndValue(
            sys.executable, ["-m", "nymprov", *args, "--admin-socket", self.socket],
            env=env, path=ROOT, reactor=reactor)
        return code, out.decode(), err.decode()

    async def test_socket_is_the_operators(self):
        """The admin socket is mode 0600 and gone after the provider stops."""
        provider = await self.start()
        self.assertEqual(stat.S_IMODE(os.stat(self.socket).st_mode), 0o600)
        self.assertTrue(stat.S_ISSOCK(os.stat(self.socket).st_mode))
        await provider.stopService()
        self.assertFalse(os.path.exists(self.socket))
        code, out, err = await self.admin("status")
        self.assertEqual(code, 1)
        self.assertIn("cannot reach the provider's admin socket", err)

    async def test_list_revoke_forget(self):
        """
        clients list shows each client's inbox and sessions; revoke closes
        the client's open session and refuses its token and re-registration;
        forget deletes it and its messages.
        """
        provider = await self.start()
        alice_key, alice, alice_token, alice_session = await self.register(provider)
        _, bob, bob_token, bob_session = await self.register(provider)
        link = await self.mix_link(provider)
        link.transport.write(b"".join(
            encode_frame(self.packet_for(provider, alice, b"for alice %d" % i)) for i in range(2)))
        await wait_for(lambda: provider.counters.get("packets.delivered") == 2, "two deliveries")

        code, out, err = await self.admin("clients", "list")
        self.assertEqual(code, 0, err)
        lines = out.splitlines()
        self.assertEqual(lines[0], "2 clients")
        self.assertIn(f"{show_client(alice)}  messages 2  bytes 22  sessions 1", lines)
        self.assertIn(f"{show_client(bob)}  messages 0  bytes 0  sessions 1", lines)

        code, out, err = await self.admin("clients", "revoke", show_client(alice))
        self.assertEqual(code, 0, err)
        self.assertEqual(json.loads(out), {"client": show_client(alice), "revoked": True, "sessions_closed": 1})
        # Alice's open session was ended; her token no longer works; she may
        # not register again, even with proof of her key.
        await alice_session.protocol.closed
        session = await self.session(provider)
        error = await self.assertFailure(session.authenticate(alice, alice_token), api.RemoteError)
        self.assertEqual(error.code, api.ErrorCode.BAD_TOKEN)
        session = await self.session(provider)
        error = await self.assertFailure(ensureDeferred(session.register(alice_key)), api.RemoteError)
        self.assertEqual(error.code, api.ErrorCode.INVITE_REQUIRED)
        # Bob is untouched.
        await bob_session.authenticate(bob, bob_token)
        code, out, err = await self.admin("clients", "list")
        self.assertIn(f"{show_client(alice)}  messages 2  bytes 22  sessions 0 revoked", out.splitlines())

        code, out, err = await self.admin("clients", "forget", show_client(alice))
        self.assertEqual(code, 0, err)
        self.assertEqual(json.loads(out)["forgotten"], True)
        self.assertFalse(provider.store.is_registered(alice))
        self.assertEqual((await provider.store.sizes())["messages"], 0)
        code, out, err = await self.admin("clients", "list")
        self.assertEqual(out.splitlines()[0], "1 clients")
        # Forgotten, she may register afresh (the provider is open).
        session = await self.session(provider)
        await session.register(alice_key)

        code, out, err = await self.admin("clients", "revoke", show_client(alice)[:-3] + "111")
        self.assertEqual(code, 2)
        self.assertIn("no such client", err)

    async def test_revocation_outlasts_a_restart(self):
        """A revoked client stays refused after the provider restarts."""
        provider = await self.start()
        key, address, _, _ = await self.register(provider)
        code, _, err = await self.admin("clients", "revoke", show_client(address))
        self.assertEqual(code, 0, err)
        await provider.stopService()
        provider = await self.start_provider(self.data_dir, admin_socket=self.socket)
        session = await self.session(provider)
        error = await self.assertFailure(ensureDeferred(session.register(key)), api.RemoteError)
        self.assertEqual(error.code, api.ErrorCode.INVITE_REQUIRED)

    async def test_invites(self):
        """invites add makes a code work at once and across a restart; remove stops it."""
        provider = await self.start(registration="invite", invite_code=["from-config"])
        code, out, err = await self.admin("invites", "list")
        self.assertEqual((code, out), (0, "from-config  (config)\n"), err)
        code, out, err = await self.admin("invites", "add", "fresh-code")
        self.assertEqual(code, 0, err)
        session = await self.session(provider)
        await session.register(SigningKey.generate(), invite=b"fresh-code")
        code, out, err = await self.admin("invites", "list")
        self.assertEqual(out, "from-config  (config)\nfresh-code  (admin)\n")
        self.assertEqual(stat.S_IMODE(os.stat(os.path.join(self.data_dir, "invites")).st_mode), 0o600)

        code, out, err = await self.admin("invites", "remove", "from-config")
        self.assertEqual(code, 2)
        self.assertIn("in the configuration", err)
        code, out, err = await self.admin("invites", "remove", "fresh-code")
        self.assertEqual(code, 0, err)
        session = await self.session(provider)
        error = await self.assertFailure(ensureDeferred(session.register(SigningKey.generate(),
                                                                         invite=b"fresh-code")),
                                         api.RemoteError)
        self.assertEqual(error.code, api.ErrorCode.INVITE_REQUIRED)
        code, out, err = await self.admin("invites", "add", "kept")
        await provider.stopService()
        provider = await self.start_provider(self.data_dir, admin_socket=self.socket,
                                             registration="invite", invite_code=["from-config"])
        session = await self.session(provider)
        await session.register(SigningKey.generate(), invite=b"kept")

    async def test_status(self):
        """status prints readiness, store sizes, queues, keys and counters as JSON."""
        provider = await self.start()
        await self.register(provider)
        code, out, err = await self.admin("status")
        self.assertEqual(code, 0, err)
        status = json.loads(out)
        self.assertEqual((status["ready"], status["store"]["clients"]), (True, 1))
        self.assertEqual(status["description"]["identity_key"], provider.keys.identity_base58)
        self.assertEqual(status["counters"]["client_api.request.register"], 1)
        self.assertEqual(status["delayed_packets"], 0)


class SharedStoreRevokeTests(ProviderFixture, TestCase):
    """Two provider processes' worth of services on one PostgreSQL store."""

    timeout = 120

    start = AdminTests.start
    admin = AdminTests.admin

    async def test_revoke_reaches_every_process(self):
        """
        A client revoked through one process's admin socket may not register
        again through another (the list of revoked clients was each
        process's own), and its session there is closed.
        """
        from tests.pgsupport import fresh_schema_url

        url = fresh_schema_url(self)
        first = await self.start(store=url, unwrap_workers=0)
        short = tempfile.mkdtemp(prefix="nymprov-admin-")
        self.addCleanup(shutil.rmtree, short, True)
        second = await self.start_provider(self.data_dir, store=url, unwrap_workers=0,
                                           admin_socket=os.path.join(short, "admin.sock"))
        key, alice, token, session = await self.register(second)
        await wait_for(lambda: first.store.is_registered(alice), "the registration notice")

        code, out, err = await self.admin("clients", "revoke", show_client(alice))
        self.assertEqual(code, 0, err)
        await session.protocol.closed
        await wait_for(lambda: second.store.is_revoked(alice), "the revocation notice")
        again = await self.session(second)
        error = await self.assertFailure(ensureDeferred(again.register(key)), api.RemoteError)
        self.assertEqual(error.code, api.ErrorCode.INVITE_REQUIRED)
