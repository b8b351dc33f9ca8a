"""
Tests for nymprov.provider.clientapi: the client-API server and client
protocols and certificate pinning.
"""

import datetime
import hashlib

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey
from OpenSSL import SSL, crypto
from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    connectProtocol,
    serverFromString,
    wrapClientTLS,
)
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase, TestCase

from nymprov.errors import PacketRefused, StoreError, UnknownLease
from nymprov.metrics import Counters
from nymprov.client.protocol import ClientApiClientProtocol
from nymprov.net.tls import CertificatePinMismatch, pinned_tls_options
from nymprov.provider.clientapi import CLOSE_GRACE, ClientApiFactory, ClientApiProtocol, HeldLeases
from nymprov.sphinx.errors import InvalidHeader, ReplayedPacket
from nymprov.wire import clientapi as api
from nymprov.wire.clientapi import ErrorCode

PACKET = bytes(2413)
FIRST_HOP = b"\x04" + bytes(31)


class FakeStore:
    """
    The IInboxStore methods the client API uses, in a dict.  With
    ``hold = True`` every call returns a Deferred the test fires itself.
    """

    def __init__(self):
        self.tokens = {}
        self.inboxes = {}
        self.leases = {}
        self.hold = False
        self.held = []
        self.broken = False
        self._next_lease = 1

    def _answer(self, compute):
        if self.broken:
            return fail(StoreError("disk on fire"))
        if self.hold:
            d = Deferred()
            self.held.append((d, compute))
            return d
        try:
            return succeed(compute())
        except Exception:
            return fail()

    def fire_held(self):
        """Fire every held call, oldest first."""
        held, self.held = self.held, []
        for d, compute in held:
            try:
                d.callback(compute())
            except Exception:
                d.errback()

    def register(self, address, token_hash, now):
        def run():
            self.tokens[address] = token_hash
            self.inboxes.setdefault(address, [])
        return self._answer(run)

    def authenticate(self, address, token_hash):
        return self._answer(lambda: self.tokens.get(address) == token_hash)

    def is_revoked(self, address):
        return False

    def is_registered(self, address):
        return address in self.tokens

    def lease(self, address, max_count, now, lease_seconds):
        def run():
            messages = self.inboxes.get(address, [])[:max_count]
            if not messages:
                return (0, [])
            lease_id, self._next_lease = self._next_lease, self._next_lease + 1
            self.leases[lease_id] = (address, messages)
            return (lease_id, list(enumerate(messages)))
        return self._answer(run)

    def ack(self, address, lease_id):
        def run():
            owner, messages = self.leases.get(lease_id, (None, []))
            if owner != address:
                raise UnknownLease("no such lease")
            del self.leases[lease_id]
            inbox = self.inboxes[address]
            for m in messages:
                inbox.remove(m)
            return len(messages)
        return self._answer(run)

    def release(self, address, lease_id):
        def run():
            owner, messages = self.leases.get(lease_id, (None, []))
            if owner != address:
                return 0
            del self.leases[lease_id]
            return len(messages)
        return self._answer(run)

    def forget(self, address):
        def run():
            self.tokens.pop(address, None)
            self.inboxes.pop(address, None)
        return self._answer(run)


class FakeNode:
    """
    Records client packets; answers with ``outcome`` (None or an exception).
    """

    def __init__(self):
        self.sent = []
        self.outcome = None

    def send_from_client(self, first_hop, packet):
        if self.outcome is not None:
            return fail(self.outcome)
        self.sent.append((first_hop, packet))
        return succeed(None)


def make_factory(store=None, node=None, clock=None, **kwargs):
    """
    Build a ClientApiFactory over fakes, with a fixed provider key.
    """
    return ClientApiFactory(
        store if store is not None else FakeStore(),
        node if node is not None else FakeNode(),
        SigningKey(b"p" * 32),
        clock if clock is not None else Clock(),
        Counters(),
        **kwargs,
    )


class Connection:
    """
    One server protocol on a StringTransport, with request helpers.
    """

    def __init__(self, factory, host="10.1.2.3"):
        self.factory = factory
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", host, 40000))
        self.protocol = factory.buildProtocol(self.transport.getPeer())
        self.protocol.makeConnection(self.transport)

    def send(self, *messages):
        """Write requests to the server in one read."""
        self.protocol.dataReceived(b"".join(api.encode(m) for m in messages))

    def answers(self):
        """Decode and clear everything the server wrote."""
        data = self.transport.value()
        self.transport.clear()
        out = []
        while data:
            length = int.from_bytes(data[:4], "big")
            out.append(api.decode_response(data[4 : 4 + length]))
            data = data[4 + length :]
        return out

    def ask(self, message):
        """Send one request and return its single answer."""
        self.send(message)
        (answer,) = self.answers()
        return answer

    def register(self, key, invite=b"", request_id=1):
        """Challenge, sign and register; return the answer."""
        challenge = self.ask(api.Challenge(request_id=request_id))
        address = bytes(key.verify_key)
        signed = api.register_signed_bytes(challenge.provider_identity, challenge.nonce, address)
        signature = key.sign(signed).signature
        return self.ask(api.Register(address, signature, invite, request_id=request_id + 1))


def error(code, request_id):
    """
    A matcher tuple for an ERROR answer.
    """
    return ("error", code, request_id)


def shape(answer):
    """
    Reduce an ERROR answer to a comparable tuple; other answers unchanged.
    """
    if isinstance(answer, api.Error):
        return ("error", answer.code, answer.request_id)
    return answer


class BasicRequestTests(SynchronousTestCase):
    """
    PING, CHALLENGE and the authentication requirement.
    """

    def setUp(self):
        self.factory = make_factory()
        self.conn = Connection(self.factory)

    def test_ping(self):
        """
        PING is answered with PONG echoing the request id.
        """
        self.assertEqual(self.conn.ask(api.Ping(request_id=77)), api.Pong(request_id=77))

    def test_challenge(self):
        """
        CHALLENGE returns the provider identity and a fresh nonce each time.
        """
        first = self.conn.ask(api.Challenge(request_id=1))
        second = self.conn.ask(api.Challenge(request_id=2))
        self.assertEqual(first.provider_identity, bytes(SigningKey(b"p" * 32).verify_key))
        self.assertEqual(first.request_id, 1)
        self.assertNotEqual(first.nonce, second.nonce)

    def test_unauthenticated(self):
        """
        SEND, PULL, ACK and FORGET need authentication; the connection
        stays open.
        """
        for i, message in enumerate(
            [api.Send(FIRST_HOP, PACKET), api.Pull(1), api.Ack(1), api.Forget()], start=1
        ):
            answer = self.conn.ask(replace_id(message, i))
            self.assertEqual(shape(answer), error(ErrorCode.NOT_AUTHENTICATED, i))
        self.assertFalse(self.conn.transport.disconnecting)
        self.assertEqual(self.factory.node.sent, [])
        self.assertEqual(self.factory.counters.get("client_api.error", "not_authenticated"), 4)

    def test_counters(self):
        """
        Every request is counted by type.
        """
        self.conn.send(api.Ping(), api.Ping(), api.Challenge())
        self.conn.answers()
        self.assertEqual(self.factory.counters.get("client_api.request", "ping"), 2)
        self.assertEqual(self.factory.counters.get("client_api.request", "challenge"), 1)


def replace_id(message, request_id):
    """
    A copy of ``message`` with ``request_id``.
    """
    from dataclasses import replace

    return replace(message, request_id=request_id)


class RegisterTests(SynchronousTestCase):
    """
    REGISTER needs a live challenge, a valid proof and, maybe, an invite.
    """

    def setUp(self):
        self.key = SigningKey(b"c" * 32)
        self.address = bytes(self.key.verify_key)
        self.factory = make_factory()
        self.conn = Connection(self.factory)

    def test_register(self):
        """
        A valid proof returns a 32-byte token; only its SHA-256 is stored;
        the connection is then authenticated.
        """
        answer = self.conn.register(self.key)
        self.assertIsInstance(answer, api.Registered)
        self.assertEqual(
            self.factory.store.tokens[self.address], hashlib.sha256(answer.token).digest()
        )
        self.assertIsInstance(self.conn.ask(api.Pull(1)), api.Messages)

    def test_no_challenge(self):
        """
        REGISTER without a CHALLENGE is BAD_PROOF.
        """
        answer = self.conn.ask(api.Register(self.address, bytes(64), request_id=5))
        self.assertEqual(shape(answer), error(ErrorCode.BAD_PROOF, 5))
        self.assertEqual(self.factory.store.tokens, {})

    def test_nonce_single_use(self):
        """
        The same proof cannot be used twice: the nonce is gone.
        """
        challenge = self.conn.ask(api.Challenge())
        signed = api.register_signed_bytes(challenge.provider_identity, challenge.nonce, self.address)
        request = api.Register(self.address, self.key.sign(signed).signature)
        self.assertIsInstance(self.conn.ask(request), api.Registered)
        self.assertEqual(shape(self.conn.ask(request)), error(ErrorCode.BAD_PROOF, 0))

    def test_nonce_bound_to_connection(self):
        """
        A proof over another connection's nonce is BAD_PROOF here.
        """
        other = Connection(self.factory)
        challenge = other.ask(api.Challenge())
        self.conn.ask(api.Challenge())
        signed = api.register_signed_bytes(challenge.provider_identity, challenge.nonce, self.address)
        answer = self.conn.ask(api.Register(self.address, self.key.sign(signed).signature))
        self.assertEqual(shape(answer), error(ErrorCode.BAD_PROOF, 0))

    def test_bad_signatures(self):
        """
        A signature by another key, over another provider, or by a key that
        is no curve point is BAD_PROOF, and nothing is stored.
        """
        other = SigningKey(b"o" * 32)
        cases = [
            (self.address, lambda ch: other.sign(
                api.register_signed_bytes(ch.provider_identity, ch.nonce, self.address)).signature),
            (self.address, lambda ch: self.key.sign(
                api.register_signed_bytes(b"x" * 32, ch.nonce, self.address)).signature),
            (b"\xff" * 32, lambda ch: bytes(64)),
            (bytes(32), lambda ch: bytes(64)),
        ]
        for address, sign in cases:
            challenge = self.conn.ask(api.Challenge())
            answer = self.conn.ask(api.Register(address, sign(challenge)))
            self.assertEqual(shape(answer), error(ErrorCode.BAD_PROOF, 0))
        self.assertEqual(self.factory.store.tokens, {})

    def test_rotation(self):
        """
        Registering again rotates the token: the old one stops working.
        """
        old = self.conn.register(self.key).token
        new = self.conn.register(self.key, request_id=3).token
        self.assertNotEqual(old, new)
        fresh = Connection(self.factory)
        self.assertEqual(shape(fresh.ask(api.Auth(self.address, old))), error(ErrorCode.BAD_TOKEN, 0))
        self.assertIsInstance(fresh.ask(api.Auth(self.address, new)), api.AuthOk)

    def test_invite_required(self):
        """
        In invite mode a new client needs a valid invite.
        """
        factory = make_factory(registration="invite", invite_codes=[b"sesame"])
        conn = Connection(factory)
        for invite in (b"", b"sesam", b"sesame!"):
            self.assertEqual(
                shape(conn.register(self.key, invite=invite)), error(ErrorCode.INVITE_REQUIRED, 2)
            )
        self.assertEqual(factory.store.tokens, {})
        self.assertIsInstance(conn.register(self.key, invite=b"sesame"), api.Registered)

    def test_registered_client_rotates_without_invite(self):
        """
        A client that is already registered may rotate without an invite,
        even when registration is closed.
        """
        for mode in ("invite", "closed"):
            factory = make_factory(registration=mode, invite_codes=[b"sesame"])
            factory.store.tokens[self.address] = b"h" * 32
            self.assertIsInstance(Connection(factory).register(self.key), api.Registered)

    def test_closed(self):
        """
        Closed registration refuses new clients whatever the invite.
        """
        factory = make_factory(registration="closed", invite_codes=[b"sesame"])
        answer = Connection(factory).register(self.key, invite=b"sesame")
        self.assertEqual(shape(answer), error(ErrorCode.INVITE_REQUIRED, 2))

    def test_garbage_spends_no_budget(self):
        """
        REGISTERs with a bad signature do not spend the address's budget:
        an honest client behind the same address still registers.
        """
        for i in range(10):
            challenge = self.conn.ask(api.Challenge(request_id=1))
            self.assertIsInstance(challenge, api.ChallengeOk)
            answer = self.conn.ask(api.Register(bytes(SigningKey(bytes([i]) * 32).verify_key),
                                                b"\x00" * 64, request_id=2))
            self.assertEqual(shape(answer), error(ErrorCode.BAD_PROOF, 2))
        self.assertIsInstance(self.conn.register(self.key), api.Registered)

    def test_rate_limited_per_ipv6_network(self):
        """
        Addresses of one IPv6 /64 share one budget; another /64 has its own.
        """
        def connection(host):
            conn = Connection.__new__(Connection)
            conn.factory = self.factory
            conn.transport = StringTransport(peerAddress=IPv6Address("TCP", host, 40000))
            conn.protocol = self.factory.buildProtocol(conn.transport.getPeer())
            conn.protocol.makeConnection(conn.transport)
            return conn

        for i in range(5):
            answer = connection(f"2001:db8::{i + 1}").register(SigningKey(bytes([i]) * 32))
            self.assertIsInstance(answer, api.Registered)
        answer = connection("2001:db8::ffff:1").register(self.key)
        self.assertEqual(shape(answer), error(ErrorCode.RATE_LIMITED, 2))
        self.assertIsInstance(connection("2001:db8:0:1::1").register(self.key), api.Registered)

    def test_rate_limited_per_ip(self):
        """
        Five registrations per hour per IP; a sixth waits 720 seconds; other
        IPs are not affected.
        """
        for i in range(5):
            self.assertIsInstance(self.conn.register(SigningKey(bytes([i]) * 32)), api.Registered)
        answer = self.conn.register(self.key)
        self.assertEqual(shape(answer), error(ErrorCode.RATE_LIMITED, 2))
        self.assertNotIn(self.address, self.factory.store.tokens)
        self.assertIsInstance(Connection(self.factory, host="10.9.9.9").register(self.key), api.Registered)
        self.factory.clock.advance(720)
        self.assertIsInstance(self.conn.register(self.key), api.Registered)

    def test_bad_registration_mode(self):
        """
        An unknown registration mode is refused at construction.
        """
        self.assertRaises(ValueError, make_factory, registration="maybe")


class AuthTests(SynchronousTestCase):
    """
    AUTH with a token from REGISTER.
    """

    def setUp(self):
        self.key = SigningKey(b"c" * 32)
        self.address = bytes(self.key.verify_key)
        self.factory = make_factory()
        self.token = Connection(self.factory).register(self.key).token
        self.conn = Connection(self.factory)

    def test_auth(self):
        """
        The right token authenticates the connection.
        """
        self.assertEqual(self.conn.ask(api.Auth(self.address, self.token, request_id=4)),
                         api.AuthOk(request_id=4))
        self.assertIsInstance(self.conn.ask(api.Pull(1)), api.Messages)

    def test_wrong_token_or_unknown_client(self):
        """
        A wrong token and an unknown address get the same BAD_TOKEN answer.
        """
        wrong = self.conn.ask(api.Auth(self.address, b"x" * 32))
        unknown = self.conn.ask(api.Auth(b"u" * 32, self.token))
        self.assertEqual(wrong, unknown)
        self.assertEqual(shape(wrong), error(ErrorCode.BAD_TOKEN, 0))

    def test_failed_auth_unauthenticates(self):
        """
        A failed AUTH on an authenticated connection leaves it
        unauthenticated.
        """
        self.conn.ask(api.Auth(self.address, self.token))
        self.conn.ask(api.Auth(self.address, b"x" * 32))
        self.assertEqual(shape(self.conn.ask(api.Pull(1))), error(ErrorCode.NOT_AUTHENTICATED, 0))


class AuthenticatedTestsMixin:
    """
    A registered, authenticated connection in ``self.conn``.
    """

    def setUp(self):
        self.key = SigningKey(b"c" * 32)
        self.address = bytes(self.key.verify_key)
        self.factory = self.make_factory()
        self.conn = Connection(self.factory)
        self.token = self.conn.register(self.key).token

    def make_factory(self):
        return make_factory(pull_max=8, slot_size=64)


class SendTests(AuthenticatedTestsMixin, SynchronousTestCase):
    """
    SEND hands packets to the node and maps its refusals.
    """

    def test_send(self):
        """
        An accepted packet is answered SENT and reached the node unchanged.
        """
        self.assertEqual(self.conn.ask(api.Send(FIRST_HOP, PACKET, request_id=9)),
                         api.Sent(request_id=9))
        self.assertEqual(self.factory.node.sent, [(FIRST_HOP, PACKET)])

    def test_refusals(self):
        """
        Each refusal of the node becomes its error code.
        """
        cases = [
            (PacketRefused("unknown_first_hop"), ErrorCode.UNKNOWN_FIRST_HOP),
            (PacketRefused("route_refused"), ErrorCode.ROUTE_REFUSED),
            (PacketRefused("busy"), ErrorCode.BUSY),
            (PacketRefused("bad_size"), ErrorCode.BAD_PACKET),
            (ReplayedPacket(), ErrorCode.REPLAY),
            (InvalidHeader(), ErrorCode.BAD_PACKET),
        ]
        for refusal, code in cases:
            self.factory.node.outcome = refusal
            answer = self.conn.ask(api.Send(FIRST_HOP, PACKET, request_id=3))
            self.assertEqual(shape(answer), error(code, 3))
        self.assertFalse(self.conn.transport.disconnecting)

    def test_unexpected_node_failure(self):
        """
        Any other node failure is INTERNAL and logged.
        """
        self.factory.node.outcome = RuntimeError("bug")
        answer = self.conn.ask(api.Send(FIRST_HOP, PACKET, request_id=3))
        self.assertEqual(shape(answer), error(ErrorCode.INTERNAL, 3))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_rate_limited(self):
        """
        Beyond the burst, SEND is RATE_LIMITED until tokens refill.
        """
        factory = make_factory(send_rate=(10.0, 3))
        conn = Connection(factory)
        conn.register(self.key)
        conn.send(*[api.Send(FIRST_HOP, PACKET, request_id=i) for i in range(4)])
        answers = conn.answers()
        self.assertEqual(answers[:3], [api.Sent(request_id=i) for i in range(3)])
        self.assertEqual(shape(answers[3]), error(ErrorCode.RATE_LIMITED, 3))
        self.assertEqual(len(factory.node.sent), 3)
        factory.clock.advance(0.1)
        self.assertIsInstance(conn.ask(api.Send(FIRST_HOP, PACKET)), api.Sent)


class PullAckTests(AuthenticatedTestsMixin, SynchronousTestCase):
    """
    PULL leases messages in fixed-size slots; ACK deletes them.
    """

    def test_empty(self):
        """
        An empty inbox gives lease 0 and no slots.
        """
        self.assertEqual(self.conn.ask(api.Pull(4, request_id=2)),
                         api.Messages(0, 64, (), request_id=2))

    def test_pull_and_ack(self):
        """
        Messages come back in order; ACK of the lease deletes them.
        """
        self.factory.store.inboxes[self.address] = [b"one", b"two", b"three"]
        answer = self.conn.ask(api.Pull(2))
        self.assertEqual(answer.messages, (b"one", b"two"))
        self.assertNotEqual(answer.lease_id, 0)
        self.assertEqual(self.conn.ask(api.Ack(answer.lease_id, request_id=6)),
                         api.AckOk(2, request_id=6))
        self.assertEqual(self.factory.store.inboxes[self.address], [b"three"])

    def test_padding(self):
        """
        With the pad flag there are exactly max_count slots on the wire,
        whatever the inbox holds.
        """
        lengths = set()
        for inbox in ([], [b"a"], [b"a" * 64, b"b"]):
            self.factory.store.inboxes[self.address] = list(inbox)
            self.conn.send(api.Pull(5, pad=True))
            frame = self.conn.transport.value()
            answer = self.conn.answers()[0]
            self.assertEqual(len(answer.slots), 5)
            self.assertEqual(answer.messages, tuple(inbox))
            lengths.add(len(frame))
        self.assertEqual(lengths, {4 + 5 + 14 + 5 * (5 + 64)})

    def test_invalid_counts(self):
        """
        max_count 0 or above pull_max is INVALID_ARGUMENT.
        """
        for count in (0, 9, 65535):
            answer = self.conn.ask(api.Pull(count, request_id=1))
            self.assertEqual(shape(answer), error(ErrorCode.INVALID_ARGUMENT, 1))

    def test_unknown_lease(self):
        """
        ACK of a lease that is not live is UNKNOWN_LEASE.
        """
        self.assertEqual(shape(self.conn.ask(api.Ack(42, request_id=8))),
                         error(ErrorCode.UNKNOWN_LEASE, 8))

    def test_oversize_message(self):
        """
        A stored message larger than the slot is INTERNAL (a configuration
        mismatch), logged, and the connection survives.
        """
        self.factory.store.inboxes[self.address] = [b"x" * 65]
        self.assertEqual(shape(self.conn.ask(api.Pull(1))), error(ErrorCode.INTERNAL, 0))
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        self.assertEqual(self.conn.ask(api.Ping()), api.Pong())

    def test_store_failure(self):
        """
        A failing store call is INTERNAL, logged and counted.
        """
        self.factory.store.broken = True
        self.assertEqual(shape(self.conn.ask(api.Pull(1))), error(ErrorCode.INTERNAL, 0))
        self.assertEqual(len(self.flushLoggedErrors(StoreError)), 1)
        self.assertEqual(self.factory.counters.get("client_api.error", "internal"), 1)

    def test_forget(self):
        """
        FORGET deletes the client and unauthenticates the connection; the
        old token no longer works.
        """
        self.assertEqual(self.conn.ask(api.Forget(request_id=3)), api.ForgetOk(request_id=3))
        self.assertNotIn(self.address, self.factory.store.tokens)
        self.assertEqual(shape(self.conn.ask(api.Pull(1))), error(ErrorCode.NOT_AUTHENTICATED, 0))
        self.assertEqual(shape(self.conn.ask(api.Auth(self.address, self.token))),
                         error(ErrorCode.BAD_TOKEN, 0))


class OrderingTests(AuthenticatedTestsMixin, SynchronousTestCase):
    """
    Answers leave in request order, whatever order the work finishes in.
    """

    def test_slow_store(self):
        """
        A PING after a slow PULL is answered after the PULL.
        """
        self.factory.store.hold = True
        self.conn.send(api.Pull(1, request_id=1), api.Ping(request_id=2))
        self.assertEqual(self.conn.answers(), [])
        self.factory.store.fire_held()
        answers = self.conn.answers()
        self.assertEqual([a.request_id for a in answers], [1, 2])
        self.assertIsInstance(answers[0], api.Messages)

    def test_pipelined_auth_then_send(self):
        """
        A SEND pipelined behind a slow AUTH waits for it and succeeds.
        """
        conn = Connection(self.factory)
        self.factory.store.hold = True
        conn.send(api.Auth(self.address, self.token, request_id=1),
                  api.Send(FIRST_HOP, PACKET, request_id=2))
        self.assertEqual(self.factory.node.sent, [])
        self.factory.store.fire_held()
        self.assertEqual(conn.answers(), [api.AuthOk(request_id=1), api.Sent(request_id=2)])

    def test_barrier_waits_for_earlier(self):
        """
        A FORGET behind a slow PULL does not start until the PULL is done.
        """
        self.factory.store.hold = True
        self.conn.send(api.Pull(1, request_id=1), api.Forget(request_id=2),
                       api.Pull(1, request_id=3))
        self.assertEqual(len(self.factory.store.held), 1)
        self.factory.store.fire_held()  # the first PULL; FORGET starts
        self.factory.store.fire_held()  # FORGET; the last PULL starts, unauthenticated
        answers = self.conn.answers()
        self.assertEqual([shape(a) if isinstance(a, api.Error) else type(a) for a in answers],
                         [api.Messages, api.ForgetOk, error(ErrorCode.NOT_AUTHENTICATED, 3)])

    def test_many_pipelined(self):
        """
        Thousands of requests in one read are all answered, in order.
        """
        self.conn.send(*[api.Ping(request_id=i) for i in range(5000)])
        self.assertEqual([a.request_id for a in self.conn.answers()], list(range(5000)))

    def test_lost_while_pending(self):
        """
        A store answer that arrives after the connection is lost writes
        nothing and raises nothing.
        """
        self.factory.store.hold = True
        self.conn.send(api.Pull(1))
        self.conn.protocol.connectionLost(Failure(ConnectionDone()))
        self.factory.store.fire_held()
        self.assertEqual(self.conn.transport.value(), b"")


class BadInputTests(SynchronousTestCase):
    """
    Garbage, unknown types and oversize frames get a typed error and a
    closed connection.
    """

    def setUp(self):
        self.factory = make_factory()
        self.conn = Connection(self.factory)

    def test_malformed(self):
        """
        A malformed frame is MALFORMED with its id, then the connection
        closes and later input is ignored.
        """
        self.conn.protocol.dataReceived(b"\x00\x00\x00\x06\x08\x00\x00\x00\x05!")
        self.assertEqual([shape(a) for a in self.conn.answers()], [error(ErrorCode.MALFORMED, 5)])
        self.assertTrue(self.conn.transport.disconnecting)
        self.conn.send(api.Ping())
        self.assertEqual(self.conn.answers(), [])
        self.assertEqual(self.factory.counters.get("client_api.error", "malformed"), 1)

    def test_unknown_type(self):
        """
        An unknown type is UNKNOWN_TYPE echoing the id, then closed.
        """
        self.conn.protocol.dataReceived(b"\x00\x00\x00\x05\x42\x00\x00\x00\x07")
        self.assertEqual([shape(a) for a in self.conn.answers()], [error(ErrorCode.UNKNOWN_TYPE, 7)])
        self.assertTrue(self.conn.transport.disconnecting)

    def test_too_short(self):
        """
        A frame too short for its header is MALFORMED with id 0.
        """
        self.conn.protocol.dataReceived(b"\x00\x00\x00\x02\x08\x00")
        self.assertEqual([shape(a) for a in self.conn.answers()], [error(ErrorCode.MALFORMED, 0)])

    def test_oversize(self):
        """
        A length above 65,536 is FRAME_TOO_LARGE before the body is read;
        further input is dropped unbuffered; a peer that does not let the
        connection close is aborted after the grace period.
        """
        self.conn.protocol.dataReceived((65537).to_bytes(4, "big") + b"x" * 1000)
        self.assertEqual([shape(a) for a in self.conn.answers()],
                         [error(ErrorCode.FRAME_TOO_LARGE, 0)])
        self.assertTrue(self.conn.transport.disconnecting)
        self.conn.protocol.dataReceived(b"x" * 100000)
        self.assertLess(len(self.conn.protocol._unprocessed), 2000)
        self.assertFalse(self.conn.transport.disconnected)
        self.factory.clock.advance(CLOSE_GRACE)
        self.assertTrue(self.conn.transport.disconnected)

    def test_error_after_pending(self):
        """
        A malformed frame behind a slow request is answered after it, and
        the connection closes after both.
        """
        self.factory.store.hold = True
        key = SigningKey(b"k" * 32)
        self.conn.send(api.Auth(bytes(key.verify_key), bytes(32), request_id=1))
        self.conn.protocol.dataReceived(b"\x00\x00\x00\x05\x42\x00\x00\x00\x02")
        self.assertEqual(self.conn.transport.value(), b"")
        self.assertFalse(self.conn.transport.disconnecting)
        self.factory.store.fire_held()
        self.assertEqual([shape(a) for a in self.conn.answers()],
                         [error(ErrorCode.BAD_TOKEN, 1), error(ErrorCode.UNKNOWN_TYPE, 2)])
        self.assertTrue(self.conn.transport.disconnecting)

    @settings(max_examples=50)
    @given(st.lists(st.sampled_from([api.Ping(), api.Challenge(), api.Pull(1)]), min_size=1,
                    max_size=8), st.data())
    def test_split_requests(self, requests, data):
        """
        Valid requests split anywhere get the same answers, in order, as
        when they arrive in one read.
        """
        wire = b"".join(api.encode(replace_id(m, i)) for i, m in enumerate(requests))
        cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=6)))
        conn = Connection(make_factory())
        for start, end in zip([0] + cuts, cuts + [len(wire)]):
            conn.protocol.dataReceived(wire[start:end])
        answers = conn.answers()
        self.assertEqual([a.request_id for a in answers], list(range(len(requests))))
        expected = {api.Ping: api.Pong, api.Challenge: api.ChallengeOk, api.Pull: api.Error}
        self.assertEqual([type(a) for a in answers], [expected[type(m)] for m in requests])

    @settings(max_examples=150)
    @given(st.binary(max_size=300), st.integers(1, 64))
    def test_garbage(self, garbage, chunk):
        """
        Any bytes, in any chunking, get decodable answers only; after an
        error that closes, the connection is closing; nothing raises.
        """
        conn = Connection(make_factory())
        for i in range(0, len(garbage), chunk):
            conn.protocol.dataReceived(garbage[i : i + chunk])
        answers = conn.answers()
        closing = [a for a in answers if isinstance(a, api.Error) and a.code in api.CLOSING_ERRORS]
        if closing:
            self.assertIs(answers[-1], closing[0])
            self.assertTrue(conn.transport.disconnecting)


class ConnectionLimitTests(SynchronousTestCase):
    """
    The connection limit and the idle timeout.
    """

    def test_busy(self):
        """
        Beyond max_connections a connection gets BUSY and is closed; a
        closed connection frees its place.
        """
        factory = make_factory(max_connections=1)
        first = Connection(factory)
        second = Connection(factory)
        self.assertEqual([shape(a) for a in second.answers()], [error(ErrorCode.BUSY, 0)])
        self.assertTrue(second.transport.disconnecting)
        second.protocol.connectionLost(Failure(ConnectionDone()))
        first.protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(factory.connections, 0)
        third = Connection(factory)
        self.assertEqual(third.ask(api.Ping()), api.Pong())

    def test_idle_timeout(self):
        """
        A connection with no complete frame for idle_timeout is aborted;
        each frame restarts the timer.
        """
        factory = make_factory(idle_timeout=30.0)
        conn = Connection(factory)
        factory.clock.advance(29)
        conn.ask(api.Ping())
        factory.clock.advance(29)
        self.assertFalse(conn.transport.disconnected)
        factory.clock.advance(1)
        self.assertTrue(conn.transport.disconnected)
        self.assertEqual(factory.counters.get("client_api.timeout"), 1)

    def test_dripped_bytes_keep_nothing_open(self):
        """
        Bytes that never complete a frame do not restart the idle timer: a
        frame begun must be complete within frame_timeout.
        """
        factory = make_factory(idle_timeout=30.0, frame_timeout=5.0)
        conn = Connection(factory)
        frame = api.encode(api.Ping())
        for byte in frame[:5]:
            self.assertFalse(conn.transport.disconnected)
            conn.protocol.dataReceived(bytes([byte]))
            factory.clock.advance(1)
        self.assertTrue(conn.transport.disconnected)

    def test_connections_per_address(self):
        """
        One IPv4 address gets at most max_connections_per_ip connections,
        the rest BUSY; another address still gets in.
        """
        factory = make_factory(max_connections=10, max_connections_per_ip=2)
        first, _second = Connection(factory), Connection(factory)
        third = Connection(factory)
        self.assertEqual(third.answers(), [api.Error(ErrorCode.BUSY, "too many connections")])
        self.assertEqual(Connection(factory, host="10.9.9.9").ask(api.Ping()), api.Pong())
        self.assertEqual(factory.counters.get("client_api.refused", "too_many_from_peer"), 1)
        first.protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(Connection(factory).ask(api.Ping()), api.Pong())

    def test_no_delay(self):
        """
        The server turns off Nagle's algorithm on TCP transports.
        """
        calls = []

        class TCPStringTransport(StringTransport):
            def setTcpNoDelay(self, enabled):
                calls.append(enabled)

        protocol = make_factory().buildProtocol(None)
        protocol.makeConnection(TCPStringTransport())
        self.assertEqual(calls, [True])

    def test_timer_cancelled_on_loss(self):
        """
        A lost connection leaves no timer behind.
        """
        factory = make_factory()
        conn = Connection(factory)
        conn.protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(factory.clock.getDelayedCalls(), [])

    def test_bad_limits(self):
        """
        A pull that could not fit 16 MiB is refused at construction.
        """
        self.assertRaises(ValueError, make_factory, pull_max=1024, slot_size=32768)
        self.assertRaises(ValueError, make_factory, pull_max=0)


class PrivacyTests(SynchronousTestCase):
    """
    Logs never carry tokens or full addresses.
    """

    def test_no_secrets_logged(self):
        """
        Events of a whole session name neither the token nor the address.
        """
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        factory = make_factory()
        conn = Connection(factory)
        key = SigningKey(b"c" * 32)
        token = conn.register(key).token
        conn.ask(api.Auth(bytes(key.verify_key), b"x" * 32))
        conn.protocol.dataReceived(b"\x00\x00\x00\x05\x42\x00\x00\x00\x02")
        text = repr(events)
        self.assertTrue(events)
        for secret in (token, bytes(key.verify_key)):
            self.assertNotIn(secret.hex(), text)
            self.assertNotIn(repr(secret), text)


class RealStoreTests(SynchronousTestCase):
    """
    The protocol against the real in-memory store.
    """

    def test_session(self):
        """
        Register, deliver into the store, pull, ack, pull again: empty.
        """
        from zope.interface.verify import verifyObject

        from nymprov.interfaces import IInboxStore
        from nymprov.storage.memory import MemoryStore

        clock = Clock()
        store = MemoryStore(clock)
        verifyObject(IInboxStore, store)
        factory = make_factory(store=store, clock=clock)
        conn = Connection(factory)
        key = SigningKey(b"c" * 32)
        token = conn.register(key).token
        address = bytes(key.verify_key)
        store.append(address, b"hello", clock.seconds())
        store.append(address, b"world", clock.seconds())
        other = Connection(factory)
        self.assertIsInstance(other.ask(api.Auth(address, token)), api.AuthOk)
        batch = other.ask(api.Pull(10, pad=True))
        self.assertEqual(batch.messages, (b"hello", b"world"))
        self.assertEqual(len(batch.slots), 10)
        self.assertEqual(other.ask(api.Ack(batch.lease_id)).deleted, 2)
        self.assertEqual(other.ask(api.Pull(10)).lease_id, 0)
        self.assertEqual(shape(other.ask(api.Ack(batch.lease_id))), error(ErrorCode.UNKNOWN_LEASE, 0))


class ClientProtocolTests(SynchronousTestCase):
    """
    ClientApiClientProtocol matches answers to requests.
    """

    def setUp(self):
        self.transport = StringTransport()
        self.client = ClientApiClientProtocol()
        self.client.makeConnection(self.transport)

    def sent(self):
        """Decode and clear the requests the client wrote."""
        data = self.transport.value()
        self.transport.clear()
        out = []
        while data:
            length = int.from_bytes(data[:4], "big")
            out.append(api.decode_request(data[4 : 4 + length]))
            data = data[4 + length :]
        return out

    def answer(self, *responses):
        self.client.dataReceived(b"".join(api.encode(r) for r in responses))

    def test_ids_and_matching(self):
        """
        Requests get ids 1, 2, ...; in-order answers fire their Deferreds.
        """
        d1 = self.client.request(api.Ping())
        d2 = self.client.request(api.Challenge())
        self.assertEqual([r.request_id for r in self.sent()], [1, 2])
        self.assertNoResult(d1)
        self.answer(api.Pong(request_id=1), api.ChallengeOk(b"p" * 32, b"n" * 32, request_id=2))
        self.assertEqual(self.successResultOf(d1), api.Pong(request_id=1))
        self.assertEqual(self.successResultOf(d2).nonce, b"n" * 32)

    def test_error_answer(self):
        """
        An ERROR answer fails the request with RemoteError; others go on.
        """
        d1 = self.client.request(api.Pull(1))
        d2 = self.client.request(api.Ping())
        self.answer(api.Error(ErrorCode.NOT_AUTHENTICATED, "no", request_id=1), api.Pong(request_id=2))
        failure = self.failureResultOf(d1, api.RemoteError)
        self.assertEqual(failure.value.code, ErrorCode.NOT_AUTHENTICATED)
        self.successResultOf(d2)

    def test_out_of_order(self):
        """
        An answer to a later request first breaks the connection: every
        pending request fails.
        """
        d1 = self.client.request(api.Ping())
        d2 = self.client.request(api.Ping())
        self.answer(api.Pong(request_id=2))
        self.failureResultOf(d1, api.MalformedResponse)
        self.failureResultOf(d2, api.MalformedResponse)
        self.assertTrue(self.transport.disconnecting)
        self.failureResultOf(self.client.request(api.Ping()), api.MalformedResponse)

    def test_wrong_type(self):
        """
        An answer of the wrong type fails the request and the connection.
        """
        d = self.client.request(api.Ping())
        self.answer(api.Sent(request_id=1))
        self.failureResultOf(d, api.MalformedResponse)
        self.assertTrue(self.transport.disconnecting)

    def test_unparsed_error(self):
        """
        An ERROR with id 0 (the provider could not parse a frame) fails all.
        """
        d = self.client.request(api.Ping())
        self.answer(api.Error(ErrorCode.MALFORMED, "bad", request_id=0))
        self.assertEqual(self.failureResultOf(d, api.RemoteError).value.code, ErrorCode.MALFORMED)

    def test_garbage_answer(self):
        """
        An undecodable answer fails pending requests with a typed error.
        """
        d = self.client.request(api.Ping())
        self.client.dataReceived(b"\x00\x00\x00\x05\x01\x00\x00\x00\x01")
        self.failureResultOf(d, api.UnknownType)

    def test_connection_lost(self):
        """
        Losing the connection fails pending and later requests.
        """
        d = self.client.request(api.Ping())
        self.client.connectionLost(Failure(ConnectionDone()))
        self.failureResultOf(d, ConnectionDone)
        self.failureResultOf(self.client.request(api.Ping()), ConnectionDone)

    def test_against_server(self):
        """
        Client and server protocols talk over StringTransports.
        """
        factory = make_factory()
        conn = Connection(factory)
        d = self.client.request(api.Ping())
        conn.protocol.dataReceived(self.transport.value())
        self.client.dataReceived(conn.transport.value())
        self.assertEqual(self.successResultOf(d), api.Pong(request_id=1))


def self_signed(directory):
    """
    Write a self-signed P-256 certificate and key under ``directory``.

    :returns: ``(key_path, cert_path, der_bytes)``.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "nymprov test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    directory.makedirs()
    key_path = directory.child("key.pem")
    cert_path = directory.child("cert.pem")
    key_path.setContent(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_path.setContent(cert.public_bytes(serialization.Encoding.PEM))
    return key_path.path, cert_path.path, cert.public_bytes(serialization.Encoding.DER)


class _TrackedServerProtocol(ClientApiProtocol):
    """Fires the factory's ``lost`` Deferred when the connection ends."""

    def connectionLost(self, reason):
        super().connectionLost(reason)
        self.factory.lost.callback(None)


class _TrackedClientProtocol(ClientApiClientProtocol):
    """Fires ``lost`` when the connection ends."""

    def __init__(self):
        super().__init__()
        self.lost = Deferred()

    def connectionLost(self, reason):
        super().connectionLost(reason)
        self.lost.callback(None)


class LoopbackTLSTests(TestCase):
    """
    A real TLS connection on 127.0.0.1, with a pinned certificate.
    """

    def setUp(self):
        from twisted.internet import reactor

        self.reactor = reactor
        self.key_path, self.cert_path, self.der = self_signed(FilePath(self.mktemp()))
        self.store = FakeStore()
        self.factory = make_factory(store=self.store, clock=reactor)
        self.factory.protocol = _TrackedServerProtocol
        self.factory.lost = Deferred()
        endpoint = serverFromString(
            reactor,
            f"ssl:0:interface=127.0.0.1:privateKey={self.key_path}:certKey={self.cert_path}",
        )
        d = endpoint.listen(self.factory)
        d.addCallback(self._listening)
        return d

    def _listening(self, port):
        self.port = port
        self.addCleanup(port.stopListening)

    def connect(self, fingerprint):
        endpoint = wrapClientTLS(
            pinned_tls_options(fingerprint),
            TCP4ClientEndpoint(self.reactor, "127.0.0.1", self.port.getHost().port),
        )
        return connectProtocol(endpoint, _TrackedClientProtocol())

    @defer.inlineCallbacks
    def test_session(self):
        """
        With the right pin: challenge, register with a real signature,
        auth on the same connection, send and pull.
        """
        client = yield self.connect(hashlib.sha256(self.der).digest())
        try:
            key = SigningKey(b"c" * 32)
            address = bytes(key.verify_key)
            challenge = yield client.request(api.Challenge())
            self.assertEqual(challenge.provider_identity, self.factory.provider_identity)
            signed = api.register_signed_bytes(challenge.provider_identity, challenge.nonce, address)
            registered = yield client.request(api.Register(address, key.sign(signed).signature))
            self.store.inboxes[address].append(b"waiting for you")
            auth = client.request(api.Auth(address, registered.token))
            send = client.request(api.Send(FIRST_HOP, PACKET))
            pull = client.request(api.Pull(4, pad=True))
            self.assertIsInstance((yield auth), api.AuthOk)
            self.assertIsInstance((yield send), api.Sent)
            batch = yield pull
            self.assertEqual(batch.messages, (b"waiting for you",))
            self.assertEqual(len(batch.slots), 4)
            self.assertEqual(self.factory.node.sent, [(FIRST_HOP, PACKET)])
        finally:
            client.transport.loseConnection()
            yield client.lost
            yield self.factory.lost

    @defer.inlineCallbacks
    def test_wrong_pin(self):
        """
        With another certificate's pin the handshake fails and no request
        reaches the provider.
        """
        client = yield self.connect(hashlib.sha256(b"some other certificate").digest())
        d = client.request(api.Ping())
        yield self.assertFailure(d, SSL.Error)
        yield client.lost
        yield self.factory.lost
        self.assertEqual(self.factory.counters.get("client_api.request", "ping"), 0)

    def test_handshake_done_check(self):
        """
        The second check, when the handshake completes, fails verification
        for a certificate that is not the pinned one and passes the pinned.
        """
        cert = crypto.X509.from_cryptography(x509.load_der_x509_certificate(self.der))
        failures = []

        class TLSProtocol:
            def failVerification(self, reason):
                failures.append(reason)

        class Connection:
            def get_peer_certificate(self):
                return cert

            def get_app_data(self):
                return TLSProtocol()

        pinned = pinned_tls_options(hashlib.sha256(self.der).digest())
        pinned._info(Connection(), SSL.SSL_CB_HANDSHAKE_DONE, 1)
        self.assertEqual(failures, [])
        other = pinned_tls_options(hashlib.sha256(b"other").digest())
        other._info(Connection(), SSL.SSL_CB_HANDSHAKE_DONE, 1)
        self.assertEqual(len(failures), 1)
        failures[0].trap(CertificatePinMismatch)

    def test_bad_fingerprint(self):
        """
        A pin that is no SHA-256 digest is refused.
        """
        self.assertRaises(ValueError, pinned_tls_options, b"short")


class HeldLeasesTests(SynchronousTestCase):
    def test_bounded_oldest_dropped(self):
        """
        A client that pulls without acking makes a connection remember at
        most ``limit`` leases; the oldest go first (they lapse on their own).
        """
        held = HeldLeases(3)
        for lease_id in range(1, 6):
            held.add((b"a", lease_id))
        self.assertEqual(list(held), [(b"a", 3), (b"a", 4), (b"a", 5)])
        held.discard((b"a", 4))
        held.discard((b"a", 99))
        self.assertEqual(list(held), [(b"a", 3), (b"a", 5)])
        held.clear()
        self.assertEqual(len(held), 0)
