"""
What the provider and mix node services share: a tree of services that
starts in order and stops in reverse, listeners bound before privileges are
dropped, and a stop with a deadline.

The tree of a node, in start order (stop is the reverse)::

    store / replay cache -> unwrap pool -> mix sender pool -> backend
        -> node core -> listeners -> chores

Each part starts only once the parts before it have started, and stops only
once the parts after it (the ones that feed it) have stopped and drained:
the listeners stop reading before the node core drains, the node core has
handed every packet on before the backend and the sender stop, and the
store closes last, once nothing can write to it.
"""

from twisted.application.internet import TimerService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, inlineCallbacks, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.python.failure import Failure

from nymprov.errors import NymProvError
from nymprov.net.addresses import show_address
from nymprov.net.inherited import adopt, take_inherited
from nymprov.net.listeners import ConnectionTracker
from nymprov.sphinx import encode_address

#: How long a stop may take before open connections are aborted and what
#: is still queued is given up (counted and logged).
DEFAULT_STOP_TIMEOUT = 10.0  # seconds

#: Longest wait for accepted connections to close (their last answers
#: flushed) before they are aborted.
CLOSE_GRACE = 2.0  # seconds

_WILDCARD_HOSTS = {"0.0.0.0", "::", ""}


class StartFailure(NymProvError):
    """A node could not start; the message is one line naming the cause."""


def _fire(d, outcome):
    if isinstance(outcome, Failure):
        d.errback(outcome)
    else:
        d.callback(outcome)


def one_line(failure):
    """The cause in ``failure`` as one line, for an operator."""
    error = failure.value
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    if isinstance(error, (NymProvError, OSError)) or type(error).__module__.startswith("twisted."):
        return text or type(error).__name__
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class ListenerService(Service):
    """
    The listening ports of one kind (mix link, client API).

    ``privilegedStartService`` binds every port (so ports below 1024 work
    under ``twistd --uid``) without accepting connections yet; once the
    parts the connections feed have started, ``startService`` accepts them.
    Stopping stops listening and closes the accepted connections, aborting
    those still open at the node's stop deadline.

    :param descriptions: endpoint strings.
    :param str what: what the ports serve, for the log.
    """

    log = Logger()

    def __init__(self, reactor, descriptions, what):
        self._reactor = reactor
        self.descriptions = tuple(descriptions)
        self.what = what
        self.name = f"listen {what}"
        self.tracker = ConnectionTracker(None)
        self.ports = []
        self._node = None

    def serve(self, factory, node=None):
        """
        Give the ports their factory.

        :param node: a node core to teach the ports' addresses as its own
            (for mix-link ports).
        """
        self.tracker.set_wrapped(factory)
        self._node = node

    def privilegedStartService(self):
        """
        Bind every port; on failure unbind those already bound.

        :raises StartFailure: naming the endpoint and the reason.
        """
        Service.privilegedStartService(self)
        if self.ports:
            return
        for description in self.descriptions:
            inherited = take_inherited(description)
            if inherited is not None:
                # Bound by a parent for this process and its siblings
                # (nym-provider run --processes N): every one accepts on it.
                port = adopt(self._reactor, *inherited, self.tracker)
                _pause(port)
                self.ports.append(port)
                continue
            d = serverFromString(self._reactor, description).listen(self.tracker)
            outcome = []
            d.addBoth(outcome.append)
            if not outcome:
                # Every endpoint nymprov accepts (tcp, ssl, unix) listens at
                # once; one that cannot is not one a node can bind early.
                d.cancel()
                self.unbind()
                raise StartFailure(f"cannot listen on {description}: the endpoint does not bind at once")
            if isinstance(outcome[0], Failure):
                self.unbind()
                raise StartFailure(f"cannot listen on {description}: {one_line(outcome[0])}")
            port = outcome[0]
            # Accepted connections would reach parts not started yet; the
            # kernel holds them in the backlog until startService.
            _pause(port)
            self.ports.append(port)

    def startService(self):
        Service.startService(self)
        # Accepting (and saying so) waits for the reactor to run: before
        # that (twistd and nym-provider run start the tree first), a signal
        # would find Python's default handler, not the reactor's orderly
        # stop, and anyone told "listening" might send one.
        self._reactor.callWhenRunning(self._accept)

    def _accept(self):
        if not self.running:
            return
        for port in self.ports:
            address = port.getHost()
            if self._node is not None and getattr(address, "host", "") not in _WILDCARD_HOSTS:
                self._node.add_own_address(encode_address(address.host, address.port))
            _resume(port)
            self.log.info("Listening on {address} ({what})", address=show_address(address), what=self.what)

    def unbind(self):
        """Stop listening at once (for a start that failed)."""
        ports, self.ports = self.ports, []
        for port in ports:
            port.stopListening()

    @inlineCallbacks
    def stopService(self):
        Service.stopService(self)
        ports, self.ports = self.ports, []
        for port in ports:
            yield maybeDeferred(port.stopListening)
        deadline = getattr(self.parent, "stop_deadline", None)
        grace = CLOSE_GRACE if deadline is None else max(0.0, min(CLOSE_GRACE, deadline - self._reactor.seconds()))
        yield self.tracker.close_all(self._reactor, grace)


def _pause(port):
    # Listening ports are file descriptors read for new connections; not
    # reading them leaves connections in the kernel's backlog.
    stop = getattr(port, "stopReading", None)
    if stop is not None:
        stop()


def _resume(port):
    start = getattr(port, "startReading", None)
    if start is not None:
        start()


class NodeCoreService(Service):
    """
    The node core in the tree: stopping it refuses new client packets,
    sends delayed packets on at once and waits, until the deadline, for
    every packet handed to it to reach its fate.
    """

    name = "node core"
    log = Logger()

    def __init__(self, node, reactor):
        self.node = node
        self._reactor = reactor

    def stopService(self):
        Service.stopService(self)
        sent_early = self.node.stop()
        if sent_early:
            self.log.info("sent {count} delayed packets on at shutdown", count=sent_early)
        deadline = getattr(self.parent, "stop_deadline", None)
        if deadline is None:
            deadline = self._reactor.seconds() + DEFAULT_STOP_TIMEOUT
        return self.node.drain(deadline)


class Part(Service):
    """
    A part of the tree that is not a service itself: ``start()`` and
    ``stop()`` (either may return a Deferred, which the tree waits for).
    """

    def __init__(self, name, start=None, stop=None):
        self.name = name
        self._start = start
        self._stop = stop

    def startService(self):
        Service.startService(self)
        if self._start is not None:
            return self._start()
        return None

    def stopService(self):
        Service.stopService(self)
        if self._stop is not None:
            return self._stop()
        return None


def chore(reactor, interval, call, name, *, at_start=True):
    """
    :param at_start: call first when it starts (else first after one
        ``interval``: a stats line at start would say nothing).
    :returns: a ``TimerService`` calling ``call`` every ``interval``
        seconds; ``call`` must not fail, since a looping call stops for
        good on its first exception.
    """
    if not at_start:
        call = _after_the_first(call)
    timer = TimerService(interval, call)
    timer.clock = reactor
    timer.setName(name)
    return timer


def _after_the_first(call):
    """:returns: ``call``, but doing nothing the first time it is called."""
    called = []

    def later():
        if not called:
            called.append(True)
            return None
        return call()

    return later


class NodeService(MultiService):
    """
    Base of the node services: a tree that starts its parts one after the
    other (a part's ``startService`` may return a Deferred) and stops them
    in reverse, each stop waiting for the one before.

    Subclasses list their listeners in ``listeners`` (made in ``__init__``)
    and implement ``assemble`` (make files and parts; add them as children
    in start order, listeners last but for chores), and ``stats_line``.

    :param reactor: the reactor (injected, for tests).
    :param bool stop_reactor_on_failure: stop the reactor if the service
        cannot start (what a daemon wants; an embedding application may not).
    :param float stop_timeout: seconds a stop may take before connections
        are aborted and what is left is counted and given up.
    """

    log = Logger()

    def __init__(self, reactor, stop_reactor_on_failure=False, stop_timeout=DEFAULT_STOP_TIMEOUT):
        MultiService.__init__(self)
        self._reactor = reactor
        self._stop_reactor_on_failure = stop_reactor_on_failure
        self.stop_timeout = stop_timeout
        #: Reactor time at which a stop gives up waiting; set when it starts.
        self.stop_deadline = None
        #: Why the start failed (a Failure), or None.
        self.start_failure = None
        self.listeners = []
        self._privileged = False
        self._start_outcome = None
        self._start_waiters = []
        self._starting = None
        self._started = []
        self._stopping = None

    # -- start -----------------------------------------------------------

    def assemble(self):
        """Make the node's files and parts; add them as children."""
        raise NotImplementedError()

    def forget_created(self):
        """Remove what ``assemble`` created (after a failed start)."""

    def privilegedStartService(self):
        """
        Bind the listeners, then make the data directory, keys and parts
        (while still privileged, so ``twistd --uid`` can give them away).
        Nothing is created if a port cannot be bound.

        :raises StartFailure: one line naming the cause.
        """
        if self._privileged:
            return
        for listener in self.listeners:
            try:
                listener.privilegedStartService()
            except StartFailure:
                for bound in self.listeners:
                    bound.unbind()
                raise
        try:
            self.assemble()
        except Exception as e:
            for listener in self.listeners:
                listener.unbind()
            self.forget_created()
            if isinstance(e, StartFailure):
                raise
            raise StartFailure(one_line(Failure()))
        self._privileged = True
        Service.privilegedStartService(self)
        for service in self:
            if service not in self.listeners:
                service.privilegedStartService()

    def startService(self):
        self._start_outcome = None
        failed = None
        if not self._privileged:
            # Before running is set: children added while running would be
            # started at once, out of order.
            try:
                self.privilegedStartService()
            except StartFailure:
                failed = Failure()
        Service.startService(self)
        if failed is not None:
            self._starting = self._start_failed(failed)
        else:
            self._starting = self._start_children()

    @inlineCallbacks
    def _start_children(self):
        for service in list(self):
            if self._stopping is not None:
                break
            try:
                yield maybeDeferred(service.startService)
            except Exception:
                self._started.append(service)
                yield self._start_failed(Failure())
                return
            self._started.append(service)
        else:
            self._set_start_outcome(self)
            return
        self._set_start_outcome(Failure(StartFailure("stopped while starting")))

    @inlineCallbacks
    def _start_failed(self, failure):
        if not failure.check(StartFailure):
            failure = Failure(StartFailure(one_line(failure)))
        self.start_failure = failure
        self.log.critical("{name} could not start: {why}", name=self.name, why=failure.getErrorMessage())
        yield self._stop_started()
        for listener in self.listeners:
            listener.unbind()
        self.forget_created()
        self.running = False
        self._set_start_outcome(failure)
        if self._stop_reactor_on_failure and self._reactor.running:
            self._reactor.stop()

    def _set_start_outcome(self, outcome):
        self._start_outcome = outcome
        waiters, self._start_waiters = self._start_waiters, []
        for d in waiters:
            _fire(d, outcome)

    def when_started(self):
        """
        :returns: a Deferred firing with this service once every part has
            started and every port accepts connections, or failing with a
            :class:`StartFailure` (tests use it to learn the ports bound to
            port 0).
        """
        d = Deferred()
        if self._start_outcome is None:
            self._start_waiters.append(d)
        else:
            _fire(d, self._start_outcome)
        return d

    # -- stop ------------------------------------------------------------

    def stopService(self):
        """
        Stop every started part in reverse order, each once the one before
        has stopped, within ``stop_timeout``; then log the final counters.

        :returns: a Deferred firing once all is stopped (the same one for
            every call).
        """
        if self._stopping is None:
            Service.stopService(self)
            self.stop_deadline = self._reactor.seconds() + self.stop_timeout
            self._stopping = self._stop()
        return self._stopping

    @inlineCallbacks
    def _stop(self):
        before = self._dropped()
        if self._starting is not None:
            # A part being started finishes starting before it is stopped.
            yield self._starting
        yield self._stop_started()
        for listener in self.listeners:
            listener.unbind()
        given_up = {
            reason: count - before.get(reason, 0)
            for reason, count in self._dropped().items()
            if count > before.get(reason, 0)
        }
        if given_up:
            self.log.warn(
                "{name}: {count} packets were dropped while stopping: {reasons}",
                name=self.name, count=sum(given_up.values()), reasons=given_up,
            )
        if self.start_failure is None and self._privileged:
            line = yield maybeDeferred(self.stats_line)
            self.log.info("{name} stopped; {line}", name=self.name, line=line)

    @inlineCallbacks
    def _stop_started(self):
        started, self._started = self._started, []
        for service in reversed(started):
            try:
                yield maybeDeferred(service.stopService)
            except Exception:
                self.log.failure("{part} did not stop cleanly", part=service.name or service)

    def _dropped(self):
        counters = getattr(self, "counters", None)
        if counters is None:
            return {}
        prefix = "packets.dropped."
        return {k[len(prefix):]: v for k, v in counters.snapshot().items() if k.startswith(prefix)}

    def stats_line(self):
        """:returns: (a Deferred firing with) the text of the stats line."""
        raise NotImplementedError()

    def log_stats(self):
        """Log the stats line (a chore); never fails."""
        d = maybeDeferred(self.stats_line)
        d.addCallback(lambda line: self.log.info("{line}", line=line))
        d.addErrback(lambda f: self.log.failure("stats failed", f))
        return d
