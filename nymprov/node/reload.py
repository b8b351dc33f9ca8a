"""
SIGHUP: reload what can change while a node runs, without dropping a
connection, and say what could not be.
"""

import signal

from twisted.application.service import Service
from twisted.logger import Logger

from nymprov.options import option_name


def changed_fields(old, new):
    """:returns: the names of the settings whose values differ, in order."""
    return [name for name in old.__dataclass_fields__ if getattr(old, name) != getattr(new, name)]


class HangupReloader(Service):
    """
    Calls ``reload()`` when the process gets SIGHUP, on the reactor thread,
    while this service runs; the previous handler is put back at stop.

    Only where the reactor runs in the main thread (a daemon; not an
    application that embeds the node in a thread of its own).

    :param reload: called with no argument; it logs what it did.
    """

    log = Logger()
    name = "sighup"

    def __init__(self, reload, reactor):
        self._reload = reload
        self._reactor = reactor
        self._previous = None

    def startService(self):
        Service.startService(self)
        try:
            self._previous = signal.signal(signal.SIGHUP, self._hangup)
        except ValueError:
            # Not the main thread: signals are not ours to take.
            self._previous = None

    def _hangup(self, signum, frame):
        self._reactor.callFromThread(self._run)

    def _run(self):
        if not self.running:
            return
        try:
            self._reload()
        except Exception:
            self.log.failure("reloading on SIGHUP failed; the node runs on as it was")

    def stopService(self):
        Service.stopService(self)
        if self._previous is not None:
            try:
                signal.signal(signal.SIGHUP, self._previous)
            except ValueError:
                pass
            self._previous = None


def log_not_reloaded(log, fields, reloadable):
    """Log the changed settings that only a restart applies."""
    stuck = [option_name(name) for name in fields if name not in reloadable]
    if stuck:
        log.warn("SIGHUP: not reloaded (restart to apply): {options}", options=", ".join(stuck))
    return stuck
