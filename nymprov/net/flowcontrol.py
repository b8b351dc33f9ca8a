"""
Flow control for a request/answer protocol: stop reading a peer that owes
too many answers (made, or written but not read), resume as it reads.
"""

from zope.interface import implementer
from twisted.internet.interfaces import IPushProducer


@implementer(IPushProducer)
class AnswerBudget:
    """
    Mixed into an ``IntNStringReceiver`` (whose parser stops between frames
    while ``paused`` is set) that is the streaming producer of its own
    transport.

    The protocol calls :meth:`owe` with the largest answer a request can
    get when it takes the request, and :meth:`answered` with the estimate
    and the real size when it writes the answer.  Answers written while
    the transport is full (the peer is not reading) stay owed until the
    transport has drained.  Past ``budget`` bytes owed the protocol stops
    reading, and starts again once the peer has read enough.

    Set ``budget`` (bytes) and ``on_pause`` (called at each pause) before
    the connection starts.
    """

    budget = 1024 * 1024
    paused = False
    _owed = 0
    _peer_slow = False
    _written_while_slow = 0
    _receiving = False
    _reading_stopped = False

    def on_pause(self):
        """Called each time reading stops; override to count it."""

    def start_flow_control(self):
        """Call from ``connectionMade``."""
        self.transport.registerProducer(self, True)

    def dataReceived(self, data):
        self._receiving = True
        try:
            super().dataReceived(data)
        finally:
            self._receiving = False

    def owe(self, estimate):
        """A request was taken whose answer may be ``estimate`` bytes."""
        self._owed += estimate
        self._update_reading()

    def answered(self, estimate, written):
        """An answer estimated at ``estimate`` was written: ``written`` bytes."""
        self._owed -= estimate
        if self._peer_slow:
            self._written_while_slow += written
        self._update_reading()

    # IPushProducer, called by the transport.

    def pauseProducing(self):
        # The transport's buffer is full: the peer is not reading.
        self._peer_slow = True
        self._update_reading()

    def resumeProducing(self):
        # The transport has written everything out.
        self._peer_slow = False
        self._written_while_slow = 0
        self._update_reading()

    def stopProducing(self):
        self._reading_stopped = True
        self._update_reading()

    def _update_reading(self):
        over = self._owed + self._written_while_slow >= self.budget
        pause = over or self._reading_stopped
        if pause and not self.paused:
            self.paused = True
            if over:
                self.on_pause()
            self.transport.pauseProducing()
        elif not pause and self.paused:
            self.paused = False
            self.transport.resumeProducing()
            # Frames already buffered are parsed now; inside a read the
            # parser's own loop carries on by itself.
            if not self._receiving:
                self.dataReceived(b"")
