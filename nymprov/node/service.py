"""
What the provider and mix node services share: a start that can be waited
for, listeners whose live connections are tracked and closed at stop, and
periodic chores.
"""

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from nymprov.net.addresses import show_address
from nymprov.net.listeners import ConnectionTracker
from nymprov.sphinx import encode_address

#: How long stopping waits for open connections to close before aborting.
CLOSE_GRACE = 5.0  # seconds

_WILDCARD_HOSTS = {"0.0.0.0", "::", ""}


def _fire(d, outcome):
    if isinstance(outcome, Failure):
        d.errback(outcome)
    else:
        d.callback(outcome)


class NodeService(Service):
    """
    Base of the node services.  Subclasses implement ``_start`` (returning a
    Deferred; it listens with :meth:`listen`) and call
    :meth:`_stop_listening` first thing in their ``stopService``.

    :param reactor: the reactor (injected, for tests).
    :param bool stop_reactor_on_failure: stop the reactor if the service
        cannot start (what a daemon wants; an embedding application may not).
    """

    log = Logger()

    def __init__(self, reactor, stop_reactor_on_failure=False):
        self._reactor = reactor
        self._stop_reactor_on_failure = stop_reactor_on_failure
        self._start_outcome = None
        self._start_waiters = []
        self._trackers = []
        self._ports = []
        self._chores = []

    def startService(self):
        Service.startService(self)
        self._start_outcome = None
        maybeDeferred(self._start).addBoth(self._started)

    def _started(self, outcome):
        if isinstance(outcome, Failure):
            self.log.failure("{name} could not start", outcome, name=self.name)
            if self._stop_reactor_on_failure and self._reactor.running:
                self._reactor.stop()
        else:
            outcome = self
        self._start_outcome = outcome
        waiters, self._start_waiters = self._start_waiters, []
        for d in waiters:
            _fire(d, outcome)

    def when_started(self):
        """
        :returns: a Deferred firing with this service once every port
            listens, or failing with the reason it could not start (tests
            use it to learn the ports bound to port 0).
        """
        d = Deferred()
        if self._start_outcome is None:
            self._start_waiters.append(d)
        else:
            _fire(d, self._start_outcome)
        return d

    @inlineCallbacks
    def listen(self, descriptions, factory, what, node=None):
        """
        Listen on every endpoint string in ``descriptions``, logging
        ``Listening on ADDRESS (what)`` for each.

        :param node: a node core to teach the addresses of these ports as
            its own (for mix-link ports).
        :returns: a Deferred firing with the list of listening ports.
        """
        tracker = ConnectionTracker(factory)
        self._trackers.append(tracker)
        ports = []
        for description in descriptions:
            port = yield serverFromString(self._reactor, description).listen(tracker)
            ports.append(port)
            self._ports.append(port)
            address = port.getHost()
            self.log.info("Listening on {address} ({what})", address=show_address(address), what=what)
            if node is not None and address.host not in _WILDCARD_HOSTS:
                node.add_own_address(encode_address(address.host, address.port))
        return ports

    def add_chore(self, interval, chore):
        """
        Run ``chore`` every ``interval`` seconds until the service stops.
        ``chore`` must not fail: a LoopingCall stops for good on its first
        exception.
        """
        loop = LoopingCall(chore)
        loop.clock = self._reactor
        loop.start(interval, now=False)
        self._chores.append(loop)

    @inlineCallbacks
    def _stop_listening(self):
        """
        Stop the chores and every listener, and close the connections they
        accepted (aborting stragglers after :data:`CLOSE_GRACE`).
        """
        Service.stopService(self)
        for loop in self._chores:
            if loop.running:
                loop.stop()
        self._chores = []
        ports, self._ports = self._ports, []
        yield DeferredList([maybeDeferred(port.stopListening) for port in ports])
        trackers, self._trackers = self._trackers, []
        yield DeferredList([tracker.close_all(self._reactor, CLOSE_GRACE) for tracker in trackers])
