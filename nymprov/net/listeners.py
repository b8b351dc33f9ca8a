"""Listening ports whose live connections are known, so that a stop can close them."""

from twisted.internet.defer import Deferred, succeed
from twisted.protocols.policies import WrappingFactory


class ConnectionTracker(WrappingFactory):
    """
    Knows the live connections of one listener, so that stopping the
    service can close them and wait until they are gone.
    """

    noisy = False

    def __init__(self, wrapped):
        WrappingFactory.__init__(self, wrapped)
        self._emptied = []

    def unregisterProtocol(self, protocol):
        WrappingFactory.unregisterProtocol(self, protocol)
        if not self.protocols:
            waiting, self._emptied = self._emptied, []
            for d in waiting:
                d.callback(None)

    def close_all(self, clock, grace):
        """
        Close every connection, aborting those still open after ``grace``.

        :returns: a Deferred firing once none is left.
        """
        if not self.protocols:
            return succeed(None)
        d = Deferred()
        self._emptied.append(d)
        for protocol in list(self.protocols):
            protocol.transport.loseConnection()

        def abort_stragglers():
            for protocol in list(self.protocols):
                protocol.transport.abortConnection()

        timer = clock.callLater(grace, abort_stragglers)
        return d.addBoth(lambda result: (timer.active() and timer.cancel(), result)[1])
