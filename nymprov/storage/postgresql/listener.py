"""
Notices from every provider process sharing the database that a client's
token changed or the client was forgotten, through LISTEN/NOTIFY.
"""

import secrets
import threading

import psycopg
from psycopg import sql
from twisted.logger import Logger

from nymprov.storage.postgresql.queries import clients_channel

#: Seconds between reconnection attempts while the database is away.
RECONNECT_DELAY = 1.0
#: Seconds a wait for notices lasts before the stop flag is looked at again
#: (a stop normally wakes the thread at once, see ``wake_channel``).
POLL_SECONDS = 1.0


class ClientNotices:
    """
    A thread that listens on its schema's clients channel
    (:func:`~nymprov.storage.postgresql.queries.clients_channel`) with a
    connection of its own, and hands each notice to the reactor thread.

    :param reactor: gets ``callFromThread``.
    :param conninfo: the database's connection string.
    :param on_change: called on the reactor thread with ``(kind, address,
        token_hash)``, ``kind`` being ``"r"`` (registered or token rotated,
        to ``token_hash``) or ``"f"`` (forgotten; ``token_hash`` is None).
    :param on_resync: called on the reactor thread whenever the listening
        connection was (re)established: notices sent while it was down are
        lost, so the receiver must re-read what it caches.
    """

    log = Logger()

    def __init__(self, reactor, conninfo, on_change, on_resync):
        self._reactor = reactor
        self._conninfo = conninfo
        self._on_change = on_change
        self._on_resync = on_resync
        self._stopping = threading.Event()
        self._thread = None
        self._channel = None
        #: A channel only this listener hears: a notice on it wakes the
        #: thread to stop without waiting for the poll.
        self.wake_channel = "nymprov_wake_" + secrets.token_hex(8)

    def start(self):
        self._thread = threading.Thread(target=self._run, name="nymprov-pg-notices", daemon=True)
        self._thread.start()

    def stop(self):
        """
        Ask the thread to stop; it does within ``POLL_SECONDS``.
        """
        self._stopping.set()

    def join(self, timeout=None):
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self):
        connected_before = False
        while not self._stopping.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True) as connection:
                    self._channel = clients_channel(connection)
                    connection.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
                    connection.execute(f"LISTEN {self.wake_channel}")
                    if connected_before:
                        self.log.info("listening for client notices again")
                    connected_before = True
                    self._reactor.callFromThread(self._on_resync)
                    while not self._stopping.is_set():
                        for notice in connection.notifies(timeout=POLL_SECONDS):
                            if self._stopping.is_set():
                                return
                            self._deliver(notice)
            except psycopg.Error as error:
                if self._stopping.is_set():
                    return
                self.log.warn("client notices lost ({error}); reconnecting", error=str(error))
                self._stopping.wait(RECONNECT_DELAY)

    def _deliver(self, notice):
        if notice.channel != self._channel:
            return
        kind, text = notice.payload[:1], notice.payload[1:]
        try:
            values = bytes.fromhex(text)
        except ValueError:
            return  # not ours: someone else on this channel
        if kind == "r" and len(values) == 64:
            self._reactor.callFromThread(self._on_change, kind, values[:32], values[32:])
        elif kind == "f" and len(values) == 32:
            self._reactor.callFromThread(self._on_change, kind, values, None)
