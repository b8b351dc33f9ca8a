"""
A client's session with its provider over the client API: connect (TLS
with a pinned certificate, or plain TCP), register, authenticate, send,
pull and ack.
"""

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, connectProtocol, wrapClientTLS

from nymprov.client.protocol import ClientApiClientProtocol
from nymprov.net.tls import pinned_tls_options
from nymprov.wire import clientapi as api


class _SessionProtocol(ClientApiClientProtocol):
    """The client protocol, telling its session when the connection ends."""

    def __init__(self):
        ClientApiClientProtocol.__init__(self)
        self.closed = Deferred()

    def connectionLost(self, reason):
        ClientApiClientProtocol.connectionLost(self, reason)
        self.closed.callback(None)


class ProviderSession:
    """
    Typed calls over one client-API connection.

    :param protocol: a connected client-API protocol whose ``closed``
        Deferred fires when the connection ends.
    """

    def __init__(self, protocol):
        self.protocol = protocol

    async def register(self, signing_key, invite=b""):
        """
        Prove ownership of ``signing_key`` and get a fresh access token.

        :param signing_key: the client's ``nacl.signing.SigningKey``.
        :returns: the 32-byte token.
        """
        challenge = await self.protocol.request(api.Challenge())
        address = bytes(signing_key.verify_key)
        signed = api.register_signed_bytes(challenge.provider_identity, challenge.nonce, address)
        signature = signing_key.sign(signed).signature
        registered = await self.protocol.request(api.Register(address, signature, invite))
        return registered.token

    def authenticate(self, address, token):
        """:returns: a Deferred firing once the connection acts for ``address``."""
        return self.protocol.request(api.Auth(address, token))

    def send(self, first_hop, packet):
        """:returns: a Deferred firing once the provider accepted ``packet``."""
        return self.protocol.request(api.Send(first_hop, packet))

    def pull(self, max_count, pad=False):
        """:returns: a Deferred firing with a ``Messages`` response."""
        return self.protocol.request(api.Pull(max_count, pad))

    def ack(self, lease_id):
        """:returns: a Deferred firing with the number of messages deleted."""
        d = self.protocol.request(api.Ack(lease_id))
        d.addCallback(lambda ok: ok.deleted)
        return d

    def forget(self):
        """:returns: a Deferred firing once the inbox and token are gone."""
        return self.protocol.request(api.Forget())

    def close(self):
        """
        Close the connection.

        :returns: a Deferred firing once it is closed.
        """
        if not self.protocol.closed.called:
            self.protocol.transport.loseConnection()
        d = Deferred()
        self.protocol.closed.addBoth(lambda result: (d.callback(None), result)[1])
        return d


async def connect(reactor, host, port, fingerprint=None):
    """
    Open a session with the provider at ``host:port``.

    :param bytes fingerprint: the SHA-256 fingerprint of the provider's
        certificate, to connect over TLS trusting only that certificate;
        ``None`` for plain TCP.
    :returns: a :class:`ProviderSession`.
    """
    endpoint_type = TCP6ClientEndpoint if ":" in host else TCP4ClientEndpoint
    endpoint = endpoint_type(reactor, host, port, timeout=10)
    if fingerprint is not None:
        endpoint = wrapClientTLS(pinned_tls_options(fingerprint), endpoint)
    protocol = await connectProtocol(endpoint, _SessionProtocol())
    return ProviderSession(protocol)
