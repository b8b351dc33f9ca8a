"""The operator's HTTP API as a Twisted service: its listeners and their connections."""

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, gatherResults, maybeDeferred
from twisted.internet.endpoints import quoteStringArgument, serverFromString
from twisted.logger import Logger

from nymprov.httpapi.admin import make_admin_site
from nymprov.httpapi.resources import make_site
from nymprov.net.addresses import show_address
from nymprov.net.listeners import ConnectionTracker

#: How long stopping waits for open HTTP connections before aborting them.
CLOSE_GRACE = 2.0  # seconds


class WebService(Service):
    """
    Serves a ``twisted.web`` site on every endpoint string in
    ``descriptions`` (none: serves nothing), and closes its connections
    when stopped.

    :param str what: what it is, for the "Listening on" log line.
    :param reactor: the reactor (injected, for tests).
    """

    log = Logger()

    def __init__(self, site, descriptions, reactor, what):
        self.descriptions = tuple(descriptions)
        self.ports = []
        self.what = what
        self._reactor = reactor
        self._tracker = ConnectionTracker(site)
        self._listening = None
        self._waiters = []

    def startService(self):
        Service.startService(self)
        d = gatherResults(
            [self._listen(description) for description in self.descriptions], consumeErrors=True
        )
        d.addBoth(self._listened)

    def _listen(self, description):
        d = serverFromString(self._reactor, description).listen(self._tracker)

        def listening(port):
            self.ports.append(port)
            self.log.info("Listening on {address} ({what})", address=show_address(port.getHost()), what=self.what)

        return d.addCallback(listening)

    def _listened(self, outcome):
        self._listening = outcome
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            self._fire(d)

    def _fire(self, d):
        outcome = self._listening
        if isinstance(outcome, list):
            d.callback(self)
        else:
            # gatherResults wraps the first failure; hand on the cause.
            d.errback(getattr(outcome.value, "subFailure", outcome))

    def when_listening(self):
        """
        :returns: a Deferred firing with this service once every endpoint
            listens, or failing with why one could not.
        """
        d = Deferred()
        if self._listening is None:
            self._waiters.append(d)
        else:
            self._fire(d)
        return d

    def stopService(self):
        Service.stopService(self)
        ports, self.ports = self.ports, []
        self._listening = None
        d = DeferredList([maybeDeferred(port.stopListening) for port in ports])
        d.addCallback(lambda _: self._tracker.close_all(self._reactor, CLOSE_GRACE))
        return d


class HttpApiService(WebService):
    """
    The operator's HTTP API (:func:`nymprov.httpapi.resources.make_site`)
    on every endpoint string in ``descriptions``.

    :param status: the node's status object (see ``make_site``).
    """

    name = "http-api"

    def __init__(self, status, descriptions, reactor):
        WebService.__init__(self, make_site(status), descriptions, reactor, "operator HTTP API")
        self.status = status
        status.http_api = self


class AdminSocketService(WebService):
    """
    The admin interface (:func:`nymprov.httpapi.admin.make_admin_site`) on
    a UNIX socket at ``path``, mode 0600; a socket left by a process that
    died is replaced, one in use is not.
    """

    name = "admin-socket"

    def __init__(self, routes, path, reactor):
        description = f"unix:{quoteStringArgument(path)}:mode=600:lockfile=1"
        WebService.__init__(self, make_admin_site(routes), [description], reactor, "admin socket")
        self.path = path
