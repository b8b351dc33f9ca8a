"""Listening ports whose live connections are known, so that a stop can close them."""

from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import Factory
from twisted.protocols.policies import WrappingFactory


class ConnectionTracker(WrappingFactory):
    """
    Knows the live connections of one listener, so that stopping the
    service can close them and wait until they are gone.
    """

    noisy = False

    def __init__(self, wrapped=None):
        WrappingFactory.__init__(self, wrapped)
        self._emptied = []

    def set_wrapped(self, wrapped):
        """
        Give a tracker made without one (to bind its ports early) the
        factory its connections are for, started as many times as the
        tracker has ports.
        """
        self.wrappedFactory = wrapped
        for _ in range(self.numPorts):
            wrapped.doStart()

    def logPrefix(self):
        if self.wrappedFactory is None:
            return type(self).__name__
        return WrappingFactory.logPrefix(self)

    def doStart(self):
        if self.wrappedFactory is not None:
            self.wrappedFactory.doStart()
        Factory.doStart(self)

    def doStop(self):
        if self.wrappedFactory is not None:
            self.wrappedFactory.doStop()
        Factory.doStop(self)

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
