"""
Unwrapping mix packets in worker processes, so that a node's packet work
(a provider's final hops, a mix node's and the Loopix route's forward hops)
uses more than the reactor's core.

Unwrapping is CPU work under the GIL, apart from the X25519 call: worker
threads were measured slower than none (GIL hand-offs), so the workers are
processes (:mod:`nymprov.node.worker`) started by ``spawnProcess`` and
fed batches through a Unix socket each. Each worker takes at most ``batches_per_worker`` batches
at a time; a batch that finds every worker busy is unwrapped on the
reactor thread, which keeps both busy without a queue growing anywhere.

Nothing is lost when a worker fails: its unanswered batches are unwrapped
on the reactor thread, and a new worker is started after
``restart_delay``.  Results are handed back in the order the batches came,
whichever worker (or the reactor thread) answered first, so that packets
leave a node in the order they arrived when their delays are equal.
"""

import os
import socket
import sys
from collections import deque

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

import nymprov
from nymprov.node.unwrap import FINAL, BatchFormatError, FrameReader, decode_outcomes, encode_packets, frame, unwrap_batch

_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(nymprov.__file__)))

#: Longest wait before replacing a worker that keeps dying at once.
MAX_RESTART_DELAY = 60.0

#: Seconds a stopping pool waits for a worker to exit before killing it.
STOP_GRACE = 5.0


_WAITING = object()


def default_worker_count():
    """:returns: one worker per core beyond the reactor's, at most 4."""
    return max(0, min((os.cpu_count() or 1) - 1, 4))


class _Channel(Protocol):
    """
    The node's end of a worker's socket: batches out, results back.

    A socket rather than the standard pipes: Twisted reads a pipe 8 KB per
    reactor turn, so a busy reactor drained a worker's answers more slowly
    than the worker produced them; a socket is read 64 KB at a time.
    """

    log = Logger()

    def __init__(self, worker):
        self._worker = worker
        self._reader = FrameReader()

    def dataReceived(self, data):
        worker = self._worker
        try:
            for body in self._reader.feed(data):
                if not worker.pending:
                    raise BatchFormatError("an answer to no batch")
                d, packets, _kind = worker.pending[0]
                outcomes = decode_outcomes(body)
                if len(outcomes) != len(packets):
                    raise BatchFormatError(f"{len(outcomes)} results for {len(packets)} packets")
                worker.pending.popleft()
                worker.answered += 1
                worker.pool.batches_in_workers += 1
                d.callback(outcomes)
        except BatchFormatError as e:
            self.log.error("unwrap worker sent a bad answer ({error}); stopping it", error=e)
            # Its batches are unwrapped here once it has gone.
            worker.kill()

    def connectionLost(self, reason):
        self._worker.channel_lost()


class _Worker(ProcessProtocol):
    """One worker process and the batches it has not answered yet."""

    log = Logger()

    def __init__(self, pool):
        self.pool = pool
        # (Deferred, packets, kind) in the order they were sent.
        self.pending = deque()
        self.channel = None
        self.answered = 0
        self.alive = False
        self.ended = Deferred()
        self._process_ended = False
        self._channel_lost = False

    def start(self, reactor, executable, arguments, env):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.channel = _Channel(self)
            reactor.adoptStreamConnection(ours.fileno(), socket.AF_UNIX, _ChannelFactory(self.channel))
            try:
                # The worker reads and writes its end as standard input.
                reactor.spawnProcess(self, executable, arguments, env=env, childFDs={0: theirs.fileno(), 2: "r"})
            except BaseException:
                self.channel.transport.abortConnection()
                raise
        finally:
            # The child and the reactor hold their own copies now.
            ours.close()
            theirs.close()
        self.alive = True
        self.channel.transport.write(frame(self.pool.keypair.private_bytes))

    def send(self, packets, kind):
        d = Deferred()
        self.pending.append((d, packets, kind))
        self.channel.transport.write(encode_packets(packets, kind))
        return d

    def close_input(self):
        """Let the worker answer what it holds, then exit."""
        self.alive = False
        self.channel.transport.loseWriteConnection()

    def kill(self):
        self.alive = False
        if self.transport is not None and not self._process_ended:
            try:
                self.transport.signalProcess("KILL")
            except ProcessExitedAlready:
                pass
        self.channel.transport.abortConnection()

    def errReceived(self, data):
        self.log.warn("unwrap worker: {text}", text=data.decode("utf-8", "replace").rstrip())

    def processEnded(self, reason):
        self._process_ended = True
        self._reason = reason
        self.channel.transport.loseConnection()
        self._maybe_gone()

    def channel_lost(self):
        self._channel_lost = True
        if self.transport is not None and not self._process_ended:
            # A worker without its socket can do nothing more.
            self.kill()
        self._maybe_gone()

    def _maybe_gone(self):
        if not (self._process_ended and self._channel_lost) or self.ended.called:
            return
        self.alive = False
        pending, self.pending = self.pending, deque()
        # Out of the pool first: code that runs on the results below may
        # stop the pool, which must not find this worker still in it.
        self.pool._worker_ended(self, self._reason)
        for d, packets, kind in pending:
            d.callback(self.pool.unwrap_here(packets, kind))
        self.ended.callback(None)


class _ChannelFactory(Factory):
    noisy = False

    def __init__(self, channel):
        self._channel = channel

    def buildProtocol(self, addr):
        return self._channel


class UnwrapPool(Service):
    """
    Unwraps batches of packets in worker processes: final hops
    (:func:`nymprov.node.unwrap.unwrap_final`) or forward hops
    (:func:`nymprov.node.unwrap.unwrap_any`).

    :param reactor: an ``IReactorProcess`` and ``IReactorTime``.
    :param keypair: the node's Sphinx ``KeyPair``; each worker gets the
        private key through its standard input.
    :param int workers: worker processes; 0 unwraps everything here.
    :param int batches_per_worker: batches a worker may hold at once.
    :param float restart_delay: seconds before a failed worker is replaced;
        doubled for each worker in a row that died without answering.
    """

    log = Logger()
    name = "unwrap pool"

    #: How a worker is started: this interpreter, so the same install.
    command = (sys.executable, "-m", "nymprov.node.worker")

    def __init__(self, reactor, keypair, workers, *, batches_per_worker=8, restart_delay=1.0):
        self._reactor = reactor
        self.keypair = keypair
        self._count = workers
        self._batches_per_worker = batches_per_worker
        self._restart_delay = restart_delay
        self._workers = []
        self._restarts = []
        self._failures = 0
        #: The wait before the last failed worker's replacement starts.
        self.next_restart_delay = None
        self._running = False
        #: Batches answered by workers, and by the reactor thread.
        self.batches_in_workers = 0
        self.batches_here = 0
        # [Deferred, results or _WAITING] per batch, in the order they came.
        self._release = deque()

    @property
    def workers(self):
        """The live worker processes."""
        return [worker for worker in self._workers if worker.alive]

    def startService(self):
        Service.startService(self)
        self.start()

    def stopService(self):
        Service.stopService(self)
        # In a node's tree, workers still busy at its stop deadline are
        # killed then (what they held is unwrapped here), not STOP_GRACE later.
        deadline = getattr(self.parent, "stop_deadline", None)
        grace = STOP_GRACE if deadline is None else min(STOP_GRACE, max(0.0, deadline - self._reactor.seconds()))
        return self.stop(grace)

    def start(self):
        """Start the worker processes."""
        self._running = True
        for _ in range(self._count):
            self._spawn()
        self.log.info("unwrapping mix packets in {count} worker process(es) beside the reactor",
                      count=len(self._workers))

    def _spawn(self):
        worker = _Worker(self)
        # The same interpreter, and this very nymprov first on its path.
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [_PACKAGE_ROOT, os.environ.get("PYTHONPATH")])))
        try:
            worker.start(self._reactor, self.command[0], self.command, env)
        except Exception:
            self.log.failure("could not start an unwrap worker; unwrapping on the reactor thread")
            return
        self._workers.append(worker)

    def unwrap_many(self, packets, kind=FINAL):
        """
        :param kind: ``FINAL`` or ``FORWARD`` (:mod:`nymprov.node.unwrap`).
        :returns: a Deferred firing with one result per packet, in order,
            once the batches before it have had theirs; it never fails for
            a worker's sake.
        """
        worker = min(self.workers, key=lambda w: len(w.pending), default=None)
        if worker is None or len(worker.pending) >= self._batches_per_worker:
            results = self.unwrap_here(packets, kind)
            if not self._release:
                return succeed(results)
            return self._in_order(succeed(results))
        return self._in_order(worker.send(packets, kind))

    def _in_order(self, answer):
        slot = [Deferred(), _WAITING]
        self._release.append(slot)
        # addBoth: a batch that failed is handed on in its turn too, or
        # every later one would wait for it for ever.
        answer.addBoth(self._answered, slot)
        return slot[0]

    def _answered(self, results, slot):
        slot[1] = results
        release = self._release
        while release and release[0][1] is not _WAITING:
            d, results = release.popleft()
            if isinstance(results, Failure):
                d.errback(results)
            else:
                d.callback(results)

    def unwrap_here(self, packets, kind=FINAL):
        """:returns: the results of ``packets``, unwrapped on this thread."""
        self.batches_here += 1
        return unwrap_batch(kind, packets, self.keypair)

    def _worker_ended(self, worker, reason):
        self._workers.remove(worker)
        if not self._running:
            return
        # A worker that dies before answering anything (a broken install,
        # say) is retried ever more slowly rather than once a second.
        self._failures = 0 if worker.answered else self._failures + 1
        delay = self.next_restart_delay = min(self._restart_delay * 2 ** self._failures, MAX_RESTART_DELAY)
        self.log.warn("unwrap worker ended ({reason}); a new one starts in {delay} s",
                      reason=reason.getErrorMessage(), delay=delay)

        def restart():
            self._restarts.remove(call)
            if self._running:
                self._spawn()

        call = self._reactor.callLater(delay, restart)
        self._restarts.append(call)

    def stop(self, grace=STOP_GRACE):
        """
        Stop the workers once they have answered their batches, killing
        those still running after ``grace`` seconds.

        :returns: a Deferred firing when every worker has exited.
        """
        self._running = False
        for call in self._restarts:
            call.cancel()
        self._restarts = []
        ended = []
        for worker in list(self._workers):
            worker.close_input()
            timer = self._reactor.callLater(grace, worker.kill)
            ended.append(worker.ended.addBoth(_cancel_timer, timer))
        return DeferredList(ended)


def _cancel_timer(result, timer):
    if timer.active():
        timer.cancel()
    return result
