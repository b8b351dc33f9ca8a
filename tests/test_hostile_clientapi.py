"""
Hostile clients of the client API, through the user's path: a
``nym-provider run`` subprocess over loopback TLS.
"""

import time

from nacl.signing import SigningKey
from zope.interface import implementer
from twisted.internet import reactor
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.defer import ensureDeferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.protocol import Protocol
from twisted.protocols.basic import Int32StringReceiver
from twisted.trial.unittest import TestCase

from nymprov.client import session as provider_client
from nymprov.net.tls import pinned_tls_options
from nymprov.wire import clientapi as api

from tests.provider_process import open_peers, spawn_provider
from tests.support import wait_for

MiB = 1024 * 1024


@implementer(IHandshakeListener)
class NeverReads(Protocol):
    """
    Writes its requests at once and, once TLS is up, never reads a byte of
    the answers.
    """

    def __init__(self, requests):
        self._requests = requests

    def connectionMade(self):
        self.transport.write(b"".join(self._requests))

    def handshakeCompleted(self):
        self.transport.pauseProducing()


@implementer(IHandshakeListener)
class ReadsLater(Int32StringReceiver):
    """
    Sends its requests, stops reading once TLS is up, and reads (decoding
    every answer) only when told to.
    """

    MAX_LENGTH = api.MAX_RESPONSE_FRAME

    def __init__(self, requests):
        self._requests = requests
        self.answers = []

    def connectionMade(self):
        self.transport.write(b"".join(self._requests))

    def handshakeCompleted(self):
        self.transport.pauseProducing()

    def stringReceived(self, frame):
        self.answers.append(api.decode_response(frame))


class UnreadAnswersTests(TestCase):
    """A client that asks and never reads cannot grow the provider."""

    timeout = 180

    def test_padded_pulls_never_read(self):
        """
        20,000 padded PULLs (each answer 64 full slots) from a client that
        never reads leave the provider's memory within 50 MiB of where it
        was, and another client's PING is answered within 100 ms.
        """
        return ensureDeferred(self._padded_pulls_never_read())

    async def _padded_pulls_never_read(self):
        process, data_dir = await spawn_provider(self, "--stats-interval", "0.2")
        host, port = process.ports["client API"]
        fingerprint = process.fingerprint(data_dir)
        honest = await provider_client.connect(reactor, host, port, fingerprint)
        self.addCleanup(honest.close)
        key = SigningKey.generate()
        token = await honest.register(key)
        await honest.pull(64, pad=True)
        await honest.protocol.request(api.Ping())
        baseline = process.rss_bytes()

        requests = [api.encode(api.Auth(bytes(key.verify_key), token, request_id=1))]
        requests += [api.encode(api.Pull(64, True, request_id=2 + i)) for i in range(20000)]
        endpoint = wrapClientTLS(pinned_tls_options(fingerprint), TCP4ClientEndpoint(reactor, host, port))
        flood = await connectProtocol(endpoint, NeverReads(requests))
        self.addCleanup(flood.transport.abortConnection)

        # The provider stops reading that connection; until it says so,
        # its memory must stay bounded (a provider without flow control
        # fails here within seconds rather than exhausting the machine).
        def paused():
            self.assertLess(process.rss_bytes() - baseline, 50 * MiB, "provider memory grew")
            return process.stats.get("client_api.paused", 0) >= 1

        await wait_for(paused, "the provider to stop reading the flood")
        pulls_then = process.stats.get("client_api.request.pull", 0)
        self.assertLess(pulls_then, 20000)

        started = time.monotonic()
        await honest.protocol.request(api.Ping())
        self.assertLess(time.monotonic() - started, 0.1)
        self.assertLess(process.rss_bytes() - baseline, 50 * MiB)

    def test_reading_resumes(self):
        """
        Once the slow client reads, the provider reads its requests again
        and every answer arrives, in request order.
        """
        return ensureDeferred(self._reading_resumes())

    async def _reading_resumes(self):
        process, data_dir = await spawn_provider(self, "--stats-interval", "0.2")
        host, port = process.ports["client API"]
        fingerprint = process.fingerprint(data_dir)
        session = await provider_client.connect(reactor, host, port, fingerprint)
        self.addCleanup(session.close)
        key = SigningKey.generate()
        token = await session.register(key)

        count = 400
        requests = [api.encode(api.Auth(bytes(key.verify_key), token, request_id=1))]
        requests += [api.encode(api.Pull(64, True, request_id=2 + i)) for i in range(count)]
        endpoint = wrapClientTLS(pinned_tls_options(fingerprint), TCP4ClientEndpoint(reactor, host, port))
        slow = await connectProtocol(endpoint, ReadsLater(requests))
        self.addCleanup(slow.transport.abortConnection)
        await wait_for(lambda: process.stats.get("client_api.paused", 0) >= 1, "the provider to stop reading")
        self.assertLess(process.stats.get("client_api.request.pull", 0), count)

        slow.transport.resumeProducing()
        await wait_for(lambda: len(slow.answers) == count + 1, "every answer")
        self.assertIsInstance(slow.answers[0], api.AuthOk)
        self.assertEqual([answer.request_id for answer in slow.answers], list(range(1, count + 2)))
        for answer in slow.answers[1:]:
            self.assertIsInstance(answer, api.Messages)
            self.assertEqual(len(answer.slots), 64)


class InviteModeTests(TestCase):
    """``--registration invite`` registers exactly the clients with a code."""

    timeout = 60

    def test_invite_codes(self):
        """
        The right invite code registers a client that can then AUTH; a
        wrong, a longer and a missing code are refused with INVITE_REQUIRED,
        and no traceback reaches the log.
        """
        return ensureDeferred(self._invite_codes())

    async def _invite_codes(self):
        process, data_dir = await spawn_provider(
            self, "--registration", "invite", "--invite-code", "sesame",
            "--invite-code", "s\u00e9same", "--register-rate", "100",
        )
        host, port = process.ports["client API"]
        fingerprint = process.fingerprint(data_dir)
        session = await provider_client.connect(reactor, host, port, fingerprint)
        self.addCleanup(session.close)

        for wrong in (b"", b"sesam", b"sesame!", b"SESAME"):
            with self.assertRaises(api.RemoteError) as refused:
                await session.register(SigningKey.generate(), invite=wrong)
            self.assertEqual(refused.exception.code, api.ErrorCode.INVITE_REQUIRED)

        for code in (b"sesame", "s\u00e9same".encode()):
            key = SigningKey.generate()
            token = await session.register(key, invite=code)
            await session.authenticate(bytes(key.verify_key), token)
        self.assertNotIn(b"Traceback", process.log)


class RevocationTests(TestCase):
    """Rotating a token or forgetting an address ends its other sessions."""

    timeout = 60

    async def connect(self, process, data_dir):
        host, port = process.ports["client API"]
        session = await provider_client.connect(reactor, host, port, process.fingerprint(data_dir))
        self.addCleanup(session.close)
        return session

    def test_rotation_closes_other_sessions(self):
        """
        A thief authenticated with a stolen token loses its session the
        moment the owner rotates the token: its next PULL is answered
        REVOKED and the connection closes; the owner's session goes on.
        """
        return ensureDeferred(self._rotation_closes_other_sessions())

    async def _rotation_closes_other_sessions(self):
        process, data_dir = await spawn_provider(self, "--register-rate", "100")
        owner = await self.connect(process, data_dir)
        key = SigningKey.generate()
        stolen = await owner.register(key)
        thief = await self.connect(process, data_dir)
        await thief.authenticate(bytes(key.verify_key), stolen)
        await thief.pull(1)

        await owner.register(key)
        with self.assertRaises(api.RemoteError) as refused:
            await thief.pull(1)
        self.assertEqual(refused.exception.code, api.ErrorCode.REVOKED)
        await thief.protocol.closed
        with self.assertRaises(api.RemoteError) as refused:
            await (await self.connect(process, data_dir)).authenticate(bytes(key.verify_key), stolen)
        self.assertEqual(refused.exception.code, api.ErrorCode.BAD_TOKEN)
        await owner.pull(1)

    def test_forget_closes_other_sessions(self):
        """
        After FORGET on one session, another session of the same address
        can neither pull nor send: it is answered REVOKED and closed.
        """
        return ensureDeferred(self._forget_closes_other_sessions())

    async def _forget_closes_other_sessions(self):
        process, data_dir = await spawn_provider(self, "--register-rate", "100")
        first = await self.connect(process, data_dir)
        key = SigningKey.generate()
        token = await first.register(key)
        second = await self.connect(process, data_dir)
        await second.authenticate(bytes(key.verify_key), token)

        await first.forget()
        with self.assertRaises(api.RemoteError) as refused:
            await second.pull(1)
        self.assertEqual(refused.exception.code, api.ErrorCode.REVOKED)
        await second.protocol.closed
        with self.assertRaises(api.RemoteError) as refused:
            await first.pull(1)
        self.assertEqual(refused.exception.code, api.ErrorCode.NOT_AUTHENTICATED)


class ConnectionFloodTests(TestCase):
    """Raw connections from one address cannot lock out other clients."""

    timeout = 120

    def test_one_address_cannot_fill_the_client_api(self):
        """
        1,100 connections from 127.0.0.3 that never start TLS (more than
        the global cap of 1,024) leave room for a client on 127.0.0.2, who
        registers and is answered.
        """
        return ensureDeferred(self._one_address_cannot_fill_the_client_api())

    async def _one_address_cannot_fill_the_client_api(self):
        process, data_dir = await spawn_provider(self)
        host, port = process.ports["client API"]
        stalled = await open_peers(host, port, 1100, "127.0.0.3")
        self.addCleanup(lambda: [peer.transport.abortConnection() for peer in stalled if peer.closed_at is None])
        # The provider refuses the connections past the address's share of
        # 128 (not the global cap): up to 128 refusals wait to hand over
        # their BUSY, the rest are aborted at once.
        await wait_for(lambda: sum(peer.closed_at is None for peer in stalled) <= 2 * 128,
                       "the connections past the per-address cap to be refused")

        endpoint = wrapClientTLS(pinned_tls_options(process.fingerprint(data_dir)),
                                 TCP4ClientEndpoint(reactor, host, port, bindAddress=("127.0.0.2", 0)))
        protocol = await connectProtocol(endpoint, provider_client._SessionProtocol())
        session = provider_client.ProviderSession(protocol)
        self.addCleanup(session.close)
        await session.register(SigningKey.generate())
        started = time.monotonic()
        await session.protocol.request(api.Ping())
        self.assertLess(time.monotonic() - started, 0.1)

    def test_tls_handshake_deadline(self):
        """
        A connection that never completes its TLS handshake is closed once
        the frame timeout has passed, long before the idle timeout.
        """
        return ensureDeferred(self._tls_handshake_deadline())

    async def _tls_handshake_deadline(self):
        process, data_dir = await spawn_provider(self, "--frame-timeout", "1", "--idle-timeout", "300")
        host, port = process.ports["client API"]
        opened = time.monotonic()
        [stalled] = await open_peers(host, port, 1, "127.0.0.1", b"\x16\x03\x01")
        await stalled.closed
        self.assertLess(stalled.closed_at - opened, 10)
        self.assertGreaterEqual(stalled.closed_at - opened, 1)


class QuietTlsClientTests(TestCase):
    """The frame deadline covers the TLS handshake, not the quiet time after it."""

    timeout = 60

    async def test_quiet_after_handshake_is_only_idle(self):
        """
        A TLS client that says nothing for longer than the frame timeout
        after its handshake is still served: only the
        idle timeout applies.  (The handshake's end was never noticed when
        the protocol stopped declaring IHandshakeListener, so the handshake
        deadline aborted every quiet TLS client.)
        """
        from twisted.internet.task import deferLater

        process, data_dir = await spawn_provider(self, "--frame-timeout", "1", "--idle-timeout", "300")
        host, port = process.ports["client API"]
        session = await provider_client.connect(reactor, host, port, process.fingerprint(data_dir))
        self.addCleanup(session.close)
        # Quiet for 2.5 frame timeouts right after the handshake: the
        # condition under test, not a proof of absence; what is checked is
        # that the request after it is answered.
        await deferLater(reactor, 2.5, lambda: None)
        self.assertFalse(session.protocol.closed.called)
        await session.register(SigningKey.generate())
