"""
Outgoing HTTP connections pinned to an address checked beforehand: the name
is resolved once, the caller checks the addresses, and the connection goes
to the one it chose, so a second lookup cannot answer differently.
"""

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IResolutionReceiver
from twisted.internet.ssl import optionsForClientTLS
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer


@implementer(IResolutionReceiver)
class _Addresses:
    def __init__(self, done):
        self._done = done
        self._found = []

    def resolutionBegan(self, resolution):
        pass

    def addressResolved(self, address):
        self._found.append(address.host)

    def resolutionComplete(self):
        self._done.callback(self._found)


def resolve(reactor, host, port):
    """
    :returns: a Deferred firing with the addresses (text, in the resolver's
        order, possibly none) that ``host`` resolves to for TCP.
    """
    done = Deferred()
    reactor.nameResolver.resolveHostName(_Addresses(done), host, port)
    return done


@implementer(IAgentEndpointFactory)
class PinnedEndpoints:
    """
    For ``Agent.usingEndpointFactory``: connects to ``address`` whatever the
    URI's host, which still names the server for TLS and the Host header.

    :param str address: an IPv4 or IPv6 address.
    :param float timeout: seconds to connect.
    """

    def __init__(self, reactor, address, timeout):
        self._reactor = reactor
        self._address = address
        self._timeout = timeout

    def endpointForURI(self, uri):
        endpoint_type = TCP6ClientEndpoint if ":" in self._address else TCP4ClientEndpoint
        endpoint = endpoint_type(self._reactor, self._address, uri.port, timeout=self._timeout)
        if uri.scheme == b"https":
            endpoint = wrapClientTLS(optionsForClientTLS(uri.host.decode("ascii")), endpoint)
        return endpoint
