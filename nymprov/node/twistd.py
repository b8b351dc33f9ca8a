"""
What ``twistd nym-provider`` and ``twistd nym-mixnode`` share: created
files given to the ``--uid/--gid`` user, and a start failure that is one
line and a non-zero exit rather than a traceback and status 0.
"""

import os
import sys

from twisted.application.service import MultiService

from nymprov.node.service import StartFailure


def owner_of(options):
    """
    :param options: a plugin's parsed options; under twistd their
        ``parent`` holds twistd's own.
    :returns: the ``(uid, gid)`` twistd switches to after
        ``privilegedStartService``, or ``None``.
    """
    parent = getattr(options, "parent", None)
    if parent is None or not hasattr(parent, "get"):
        return None
    uid, gid = parent.get("uid"), parent.get("gid")
    if uid is None and gid is None:
        return None
    if uid is not None and gid is None:
        # What twistd itself does with --uid alone.
        import pwd

        gid = pwd.getpwuid(uid).pw_gid
    return uid, gid


class TwistdRoot(MultiService):
    """
    The node as twistd runs it.

    twistd calls ``privilegedStartService`` and ``startService`` before its
    reactor runs: a node that cannot bind a port or make its keys exits
    there with one line on standard error (``SystemExit``).  A part that
    fails once the reactor runs (the store, say) stops the node and the
    reactor; the process then exits with status 1 once twistd's own
    shutdown has run, its pid file removed.

    :param node: a :class:`nymprov.node.service.NodeService`.
    :param reactor: the reactor twistd runs.
    :param pidfile: twistd's pid file, removed before a failed exit.
    """

    def __init__(self, node, reactor, pidfile=None):
        MultiService.__init__(self)
        self.node = node
        self._reactor = reactor
        self._pidfile = pidfile
        node.setServiceParent(self)

    def privilegedStartService(self):
        try:
            MultiService.privilegedStartService(self)
        except StartFailure as e:
            # twistd has pointed sys.stderr at its log; the operator who
            # started it reads the process's own standard error.
            print(f"{self.node.name}: {e}", file=sys.__stderr__, flush=True)
            self._remove_pidfile()
            raise SystemExit(1)

    def _remove_pidfile(self):
        if self._pidfile:
            try:
                os.unlink(self._pidfile)
            except OSError:
                pass

    def startService(self):
        MultiService.startService(self)
        self._reactor.addSystemEventTrigger("after", "shutdown", self._exit_if_failed)

    def _exit_if_failed(self):
        if self.node.start_failure is None:
            return
        print(f"{self.node.name}: {self.node.start_failure.getErrorMessage()}", file=sys.__stderr__, flush=True)
        self._remove_pidfile()
        sys.stdout.flush()
        sys.stderr.flush()
        # twistd's exit status is 0 whatever happened once its reactor ran;
        # a node that never started must not look like one that stopped.
        os._exit(1)


def twistd_root(node, options, reactor):
    """:returns: ``node`` wrapped for twistd (see :class:`TwistdRoot`)."""
    parent = getattr(options, "parent", None)
    pidfile = parent.get("pidfile") if parent is not None and hasattr(parent, "get") else None
    return TwistdRoot(node, reactor, pidfile)
