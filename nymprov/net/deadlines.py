"""
Idle and frame deadlines of a framed connection: the idle timeout counts
from the last complete frame, so a byte now and then keeps nothing open,
and a frame (or a TLS handshake) once begun must be complete within the
frame timeout, sooner if the idle timeout ends first.
"""

from twisted.protocols.policies import TimeoutMixin


class FrameDeadlines(TimeoutMixin):
    """
    Mixed into a protocol whose factory has ``clock`` (``seconds`` and
    ``callLater``), ``idle_timeout`` and ``frame_timeout``.  The protocol
    calls :meth:`frame_complete` at the start and after each complete
    frame, and :meth:`frame_begins` when bytes of an incomplete frame (or
    a handshake) are pending.
    """

    _idle_deadline = None
    frame_begun = False

    def callLater(self, period, func):
        """TimeoutMixin API: timers run on the factory's injected clock."""
        return self.factory.clock.callLater(period, func)

    def frame_complete(self):
        """A frame (or the handshake) is complete: the connection is idle."""
        factory = self.factory
        self.frame_begun = False
        self._idle_deadline = factory.clock.seconds() + factory.idle_timeout
        self.setTimeout(factory.idle_timeout)

    def frame_begins(self):
        """Part of a frame is pending: it must be complete in time."""
        if self.frame_begun:
            return
        factory = self.factory
        self.frame_begun = True
        if self._idle_deadline is None:
            self._idle_deadline = factory.clock.seconds() + factory.idle_timeout
        left = self._idle_deadline - factory.clock.seconds()
        self.setTimeout(max(0.0, min(factory.frame_timeout, left)))
