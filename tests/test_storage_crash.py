"""
Tests that the SQLite store keeps every committed message through a kill -9.
"""

import os
import signal
import sqlite3
import sys

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import ProcessProtocol
from twisted.trial.unittest import TestCase

import nymprov
from nymprov.storage.limits import StoreLimits
from nymprov.storage.sqlite import SQLiteStore

ADDRESS = b"C" * 32

# Keeps WINDOW appends outstanding (each fired append starts another) and
# prints each message's number once its Deferred has fired, that is once it
# is committed; so the kill lands while batches are being written.  Bounded:
# it stops by itself after TOTAL messages if nobody kills it.
APPENDER = r"""
import sys
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from nymprov.storage.limits import StoreLimits
from nymprov.storage.sqlite import SQLiteStore

TOTAL, WINDOW = 100000, 1500
ADDRESS = b"C" * 32
started = 0
finished = 0

def append_next(store):
    global started
    if started < TOTAL:
        number, started = started, started + 1
        body = b"%d:" % number + b"x" * 2000
        store.append(ADDRESS, body, 0).addCallback(committed, store, number)

def committed(_, store, number):
    global finished
    sys.stdout.write("%d\n" % number)
    sys.stdout.flush()
    finished += 1
    if finished == TOTAL:
        store.close().addCallback(lambda _: reactor.stop())
    append_next(store)

@inlineCallbacks
def main():
    store = SQLiteStore(reactor, sys.argv[1], StoreLimits(max_messages=10**6, max_bytes=2**40))
    yield store.start()
    yield store.register(ADDRESS, b"h" * 32, 0)
    for _ in range(WINDOW):
        append_next(store)

reactor.callWhenRunning(main)
reactor.run()
"""

# Appends ten messages that would wait a minute for their batch, then stops
# the reactor without closing the store.
STOPPER = r"""
import sys
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from nymprov.storage.limits import StoreLimits
from nymprov.storage.sqlite import SQLiteStore

@inlineCallbacks
def main():
    store = SQLiteStore(reactor, sys.argv[1], StoreLimits(commit_delay=60))
    # Stopped as twistd stops any service: from a "before shutdown" trigger.
    reactor.addSystemEventTrigger("before", "shutdown", store.stopService)
    yield store.startService()
    yield store.register(b"C" * 32, b"h" * 32, 0)
    for number in range(10):
        store.append(b"C" * 32, b"%d" % number, 0)
    reactor.stop()

reactor.callWhenRunning(main)
reactor.run()
"""

KILL_AFTER = 3000  # reported messages
DEADLINE = 60.0  # seconds; the test gives up (and kills) after this


class _Appender(ProcessProtocol):
    """
    Collects the numbers a child reports and kills it with SIGKILL once it
    has reported ``KILL_AFTER`` of them.
    """

    def __init__(self):
        self.reported = set()
        self.errors = b""
        self.ended = Deferred()
        self._partial = b""
        self._killed = False

    def outReceived(self, data):
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        self.reported.update(int(line) for line in lines if line)
        if len(self.reported) >= KILL_AFTER:
            self.kill()

    def errReceived(self, data):
        self.errors += data

    def kill(self):
        if not self._killed:
            self._killed = True
            self.transport.signalProcess("KILL")

    def processEnded(self, reason):
        self.ended.callback(reason.value)


class CrashTests(TestCase):
    """
    A store process killed mid-write loses nothing it reported committed;
    one that stops its reactor commits everything pending.
    """

    def spawn(self, script_text, path):
        """
        Run ``script_text`` with the database ``path`` in a new Python.
        """
        script = os.path.abspath(self.mktemp())
        with open(script, "w") as f:
            f.write(script_text)
        root = os.path.dirname(os.path.dirname(os.path.abspath(nymprov.__file__)))
        env = dict(os.environ, PYTHONPATH=root)
        child = _Appender()
        reactor.spawnProcess(child, sys.executable, [sys.executable, script, path], env=env)
        give_up = reactor.callLater(DEADLINE, child.kill)
        child.ended.addBoth(lambda result: (give_up.cancel() if give_up.active() else None, result)[1])
        return child

    @inlineCallbacks
    def test_reactor_stop_flushes(self):
        """
        Stopping the reactor stops the store run as a service (as twistd and
        the node's tree run it), which commits the pending appends, and the
        process exits.
        """
        path = os.path.abspath(self.mktemp())
        child = self.spawn(STOPPER, path)
        ended = yield child.ended
        self.assertEqual(getattr(ended, "exitCode", None), 0, child.errors)
        db = sqlite3.connect(path)
        try:
            self.assertEqual(db.execute("SELECT count(*) FROM messages").fetchone(), (10,))
        finally:
            db.close()

    @inlineCallbacks
    def test_kill_keeps_committed(self):
        """
        After SIGKILL the file passes the integrity check, holds every
        message whose append had fired, and opens as a store again.
        """
        path = os.path.abspath(self.mktemp())
        appender = self.spawn(APPENDER, path)
        ended = yield appender.ended
        self.assertEqual(getattr(ended, "signal", None), signal.SIGKILL, appender.errors)
        self.assertGreaterEqual(len(appender.reported), KILL_AFTER)

        db = sqlite3.connect(path)
        try:
            self.assertEqual(db.execute("PRAGMA integrity_check").fetchall(), [("ok",)])
            stored = {int(body.split(b":")[0]) for (body,) in db.execute("SELECT body FROM messages")}
        finally:
            db.close()
        self.assertEqual(appender.reported - stored, set())

        store = SQLiteStore(reactor, path, StoreLimits(max_messages=10**6, max_bytes=2**40))
        yield store.start()
        self.addCleanup(store.close)
        self.assertTrue(store.is_registered(ADDRESS))
        self.assertEqual((yield store.sizes())["messages"], len(stored))
