"""
What each client-API request does: the handlers the server protocol runs,
against the store, the node and the factory's limits and sessions.
"""

import hashlib

from nacl.exceptions import CryptoError
from nacl.signing import VerifyKey

from nymprov.errors import ClientRevoked, PacketRefused, UnknownLease
from nymprov.net.connlimit import peer_network
from nymprov.sphinx.errors import ReplayedPacket, SphinxError
from nymprov.wire import clientapi as api
from nymprov.wire.clientapi import ClientApiError, ErrorCode

_PACKET_REFUSALS = {
    "unknown_first_hop": ErrorCode.UNKNOWN_FIRST_HOP,
    "route_refused": ErrorCode.ROUTE_REFUSED,
    "busy": ErrorCode.BUSY,
}


def _refusal(code, message):
    return ClientApiError(code, message)


def _token_hash(token):
    return hashlib.sha256(token).digest()


def _short(address):
    """A log-safe hint of a client address: its first four bytes."""
    return address[:4].hex()


class RequestHandlers:
    """
    Mixed into the client-API server protocol, which provides ``factory``,
    ``transport``, ``log``, ``_address``, ``_nonce``, ``_set_address``,
    ``_peer_host`` and ``leases``.
    """

    # Request handlers: each returns a response, a Deferred of one, or
    # raises ClientApiError; anything else becomes INTERNAL.

    def _require_auth(self):
        if self._address is None:
            raise _refusal(ErrorCode.NOT_AUTHENTICATED, "authenticate first")
        return self._address

    def _handle_ping(self, request):
        return api.Pong(request_id=request.request_id)

    def _handle_challenge(self, request):
        factory = self.factory
        self._nonce = factory.random_bytes(api.NONCE_LENGTH)
        return api.ChallengeOk(factory.provider_identity, self._nonce, request_id=request.request_id)

    def _handle_register(self, request):
        factory = self.factory
        # Any REGISTER uses up the nonce, successful or not.
        nonce, self._nonce = self._nonce, None
        if nonce is None:
            raise _refusal(ErrorCode.BAD_PROOF, "no live challenge")
        signed = api.register_signed_bytes(factory.provider_identity, nonce, request.address)
        try:
            VerifyKey(request.address).verify(signed, request.signature)
        except (CryptoError, ValueError, TypeError):
            raise _refusal(ErrorCode.BAD_PROOF, "bad signature") from None
        # Only a valid proof spends the budget, so garbage from a neighbour
        # behind the same address locks no honest client out; one budget
        # per IPv4 address or IPv6 /64 (a host holds a whole /64).
        if not factory.register_limiter.allow(peer_network(self._peer_host())):
            factory.counters.incr("client_api.rate_limited", "register")
            raise _refusal(ErrorCode.RATE_LIMITED, "too many registrations")
        if not factory.registration.allows(request.address, request.invite):
            raise _refusal(ErrorCode.INVITE_REQUIRED, "registration needs a valid invite")
        token = factory.random_bytes(api.TOKEN_LENGTH)
        token_hash = _token_hash(token)
        d = factory.store.register(request.address, token_hash, factory.clock.seconds())

        def registered(_):
            # A new token ends every other session of the address: one of
            # them may be a thief's with the old token.
            factory.sessions.revoke(request.address, keep=self)
            self._set_address(request.address, token_hash)
            self.log.debug("client {client} registered", client=_short(request.address))
            return api.Registered(token, request_id=request.request_id)

        def revoked(failure):
            # Revoked while this registration was under way.
            failure.trap(ClientRevoked)
            raise _refusal(ErrorCode.INVITE_REQUIRED, "registration needs a valid invite")

        return d.addCallbacks(registered, revoked)

    def _handle_auth(self, request):
        # A failed AUTH leaves the connection unauthenticated, whatever it
        # was before: the client said it is someone it could not prove.
        self._set_address(None)
        factory = self.factory
        token_hash = _token_hash(request.token)
        revocations = factory.sessions.revocations

        def checked(ok):
            nonlocal revocations
            if ok and factory.sessions.revocations != revocations:
                # A rotation or FORGET ended sessions while this lookup ran;
                # it may have read the old token: look again.
                revocations = factory.sessions.revocations
                return factory.store.authenticate(request.address, token_hash).addCallback(checked)
            if not ok:
                raise _refusal(ErrorCode.BAD_TOKEN, "unknown client or wrong token")
            self._set_address(request.address, token_hash)
            return api.AuthOk(request_id=request.request_id)

        return factory.store.authenticate(request.address, token_hash).addCallback(checked)

    def _handle_send(self, request):
        address = self._require_auth()
        factory = self.factory
        if not factory.send_limiter.allow(address):
            factory.counters.incr("client_api.rate_limited", "send")
            raise _refusal(ErrorCode.RATE_LIMITED, "sending too fast")
        d = factory.node.send_from_client(request.first_hop, request.packet)
        d.addCallbacks(lambda _: api.Sent(request_id=request.request_id), _packet_refused)
        return d

    def _handle_pull(self, request):
        address = self._require_auth()
        factory = self.factory
        if not 1 <= request.max_count <= factory.pull_max:
            raise _refusal(
                ErrorCode.INVALID_ARGUMENT, f"max_count must be 1..{factory.pull_max}"
            )
        d = factory.store.lease(
            address, request.max_count, factory.clock.seconds(), factory.lease_seconds
        )

        def leased(result):
            lease_id, messages = result
            if lease_id:
                self.leases.add((address, lease_id))
            slots = [api.Slot.message(body) for _, body in messages]
            if request.pad:
                slots.extend([api.Slot.dummy()] * (request.max_count - len(slots)))
            # A stored message larger than the client API's slot (a
            # configuration mismatch, not the client's fault) makes
            # Messages refuse with ValueError.
            return api.Messages(lease_id, factory.slot_size, tuple(slots),
                                request_id=request.request_id)

        return d.addCallback(leased)

    def _handle_ack(self, request):
        address = self._require_auth()
        self.leases.discard((address, request.lease_id))
        d = self.factory.store.ack(address, request.lease_id)

        def unknown(failure):
            failure.trap(UnknownLease)
            raise _refusal(ErrorCode.UNKNOWN_LEASE, "no such live lease")

        d.addCallbacks(lambda deleted: api.AckOk(deleted, request_id=request.request_id), unknown)
        return d

    def _handle_forget(self, request):
        address = self._require_auth()
        d = self.factory.store.forget(address)

        def forgotten(_):
            self.factory.sessions.revoke(address, keep=self)
            self._set_address(None)
            return api.ForgetOk(request_id=request.request_id)

        return d.addCallback(forgotten)


def _packet_refused(failure):
    """Map the node's refusal of a client packet to an error code."""
    error = failure.value
    if isinstance(error, PacketRefused):
        code = _PACKET_REFUSALS.get(error.reason, ErrorCode.BAD_PACKET)
        raise _refusal(code, error.reason)
    if isinstance(error, ReplayedPacket):
        raise _refusal(ErrorCode.REPLAY, "packet replayed")
    if isinstance(error, SphinxError):
        raise _refusal(ErrorCode.BAD_PACKET, error.reason)
    return failure
