"""
One end of a reliable byte stream over the mixnet (frames of
:mod:`nymprov.wire.streams`): sequence numbers, cumulative and selective
ACKs, retransmission after a time-out measured from the round trips seen
(RFC 6298's estimator), a flow-control window, half-close and an idle
time-out.  Shared by the client's SOCKS5 port and the ``socks5``
backend; it knows nothing about how a frame travels (``transmit``).

Written by hand: the mixnet loses and reorders packets like no transport a
library offers a stream over, and TCP itself cannot ride on SURBs.
"""

import collections

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from nymprov.net.roundtrip import RetransmissionTimeout
from nymprov.wire.streams import (
    ACK,
    FIN,
    RELIABLE,
    RESET,
    REPLY_GENERAL_FAILURE,
    REPLY_TTL_EXPIRED,
    decode_reset,
    decode_sack,
    encode_reset,
    encode_sack,
)

#: Frames a receiver takes past the last one it delivered in order.
DEFAULT_WINDOW = 64
#: Frames sent before the other side said what its window is.
INITIAL_WINDOW = 16
#: The time-out never goes below this, however quick the round trips: a
#: mixnet's delays vary far more than a link's.
MIN_RTO = 0.25


class _Unacked:
    __slots__ = ("kind", "payload", "sent_at", "attempts", "sacked")

    def __init__(self, kind, payload, sent_at):
        self.kind = kind
        self.payload = payload
        self.sent_at = sent_at
        self.attempts = 1
        # The other side holds it (a selective ACK) but has not delivered
        # it: never sent again, though it still counts in flight.
        self.sacked = False


class StreamEndpoint:
    """
    :param clock: an ``IReactorTime``.
    :param transmit: ``(kind, seq, ack, window, payload) -> None``: send one
        frame (it may be lost; this end retransmits).
    :param on_frame: ``(kind, payload) -> None``: a reliable frame, in order,
        once (OPEN, OPENED, DATA, FIN).
    :param on_closed: ``(code) -> None``: the stream is over: ``None`` after
        both FINs were exchanged and acked, else the SOCKS5 reply code of
        the RESET or failure that ended it.  Called once.
    :param float rto: seconds before an unacked frame is sent again until
        round trips have been measured; then ``srtt + 4 * rttvar``, at
        least :data:`MIN_RTO` and at most this value times 8 (doubled per
        attempt of a frame, up to that cap).
    :param int max_attempts: sends of one frame before the stream is reset.
    :param int window: frames this end takes past the last delivered one.
    :param float idle_timeout: seconds without a frame from the other side
        before the stream is reset.
    """

    def __init__(self, clock, transmit, on_frame, on_closed, *, rto=3.0, max_attempts=10,
                 window=DEFAULT_WINDOW, idle_timeout=300.0):
        self._clock = clock
        self._transmit = transmit
        self._on_frame = on_frame
        self._on_closed = on_closed
        self._rto = RetransmissionTimeout(rto, min(MIN_RTO, 8 * rto), 8 * rto)
        self._max_attempts = max_attempts
        self._window = window
        self._next_seq = 0
        self._expected = 0
        self._peer_ack = 0
        self._peer_window = INITIAL_WINDOW
        self._unacked = collections.OrderedDict()  # seq -> _Unacked
        self._waiting = collections.deque()  # (seq, kind, payload) beyond the peer's window
        self._early = {}  # seq -> (kind, payload): arrived before a missing one
        # In order and acked, but not delivered while delivery is paused
        # (the program or site this end writes to does not read).
        self._held = collections.deque()
        self.delivery_paused = False
        self.fin_sent = False
        self.fin_received = False
        self.closed = False
        self._retransmit_call = None
        self._linger_call = None
        self._idle_timeout = idle_timeout
        self._idle_call = clock.callLater(idle_timeout, self._idle)

    # -- sending ------------------------------------------------------------

    @property
    def in_flight(self):
        """Reliable frames sent or waiting, not yet acked."""
        return len(self._unacked) + len(self._waiting)

    def send(self, kind, payload=b""):
        """Send a reliable frame (OPEN, OPENED, DATA or FIN) in order."""
        if kind not in RELIABLE:
            raise ValueError(f"frame kind {kind} is not reliable")
        if self.closed or self.fin_sent:
            return
        if kind == FIN:
            self.fin_sent = True
        self._waiting.append((self._next_seq, kind, payload))
        self._next_seq += 1
        self._pump()

    def _free_window(self):
        # Frames held early lie inside the window counted from ``ack``, so
        # they do not shrink it (shrinking it stalled the sender at every
        # loss until its time-out); frames acked but held undelivered do.
        return max(self._window - len(self._held), 0)

    def _pump(self):
        while self._waiting and self._waiting[0][0] < self._peer_ack + self._peer_window:
            seq, kind, payload = self._waiting.popleft()
            self._unacked[seq] = _Unacked(kind, payload, self._clock.seconds())
            self._transmit(kind, seq, self._expected, self._free_window(), payload)
        self._arm_retransmit()

    def _arm_retransmit(self):
        # With frames waiting and none in flight the window is shut: the
        # timer then probes, as TCP's persist timer does, since the ACK
        # that opens it again may never come.
        if (self._unacked or self._waiting) and (
                self._retransmit_call is None or not self._retransmit_call.active()):
            self._retransmit_call = self._clock.callLater(self._rto.timeout, self._retransmit)

    def _retransmit(self):
        self._retransmit_call = None
        if self.closed:
            return
        if not self._unacked and self._waiting:
            seq, kind, payload = self._waiting.popleft()
            self._unacked[seq] = _Unacked(kind, payload, self._clock.seconds())
            self._transmit(kind, seq, self._expected, self._free_window(), payload)
            self._arm_retransmit()
            return
        now = self._clock.seconds()
        for seq, frame in list(self._unacked.items()):
            if frame.sacked or now - frame.sent_at < self._rto.for_attempt(frame.attempts):
                continue
            if frame.attempts >= self._max_attempts:
                self.reset(REPLY_TTL_EXPIRED)
                return
            frame.attempts += 1
            frame.sent_at = now
            self._transmit(frame.kind, seq, self._expected, self._free_window(), frame.payload)
        self._arm_retransmit()

    def ack(self):
        """Tell the other side what arrived (and the window), now: in order, and what is held past a gap."""
        if not self.closed:
            self._transmit(ACK, 0, self._expected, self._free_window(), encode_sack(self._expected, self._early))

    def _measure(self, acknowledged):
        # One sample per ACK, from the newest frame it covers; Karn: only a
        # frame sent once gives an unambiguous round trip.
        sent_once = [frame.sent_at for frame in acknowledged if frame.attempts == 1]
        if not sent_once:
            return
        self._rto.sample(self._clock.seconds() - max(sent_once))

    def reset(self, code=REPLY_GENERAL_FAILURE):
        """End the stream at once, telling the other side (best effort)."""
        if self.closed:
            return
        self._transmit(RESET, 0, self._expected, 0, encode_reset(code))
        self._close(code)

    def linger(self, seconds):
        """Reset the stream unless it has closed within ``seconds``."""
        if not self.closed and self._linger_call is None:
            self._linger_call = self._clock.callLater(seconds, self.reset, REPLY_TTL_EXPIRED)

    # -- receiving ----------------------------------------------------------

    def receive(self, frame):
        """Take a :class:`nymprov.wire.streams.StreamFrame` from the other side."""
        if self.closed:
            return
        self._idle_call.reset(self._idle_timeout)
        if frame.kind == RESET:
            self._close(decode_reset(frame.payload))
            return
        newly = []  # frames this frame is the first to acknowledge
        if self._peer_ack < frame.ack <= self._next_seq:
            for seq in [s for s in self._unacked if s < frame.ack]:
                done = self._unacked.pop(seq)
                if not done.sacked:
                    newly.append(done)
            self._peer_ack = frame.ack
        if frame.kind == ACK and frame.payload and frame.ack == self._peer_ack:
            for seq in decode_sack(frame.ack, frame.payload):
                held = self._unacked.get(seq)
                if held is not None and not held.sacked:
                    held.sacked = True
                    newly.append(held)
        self._measure(newly)
        if frame.ack >= self._peer_ack:
            self._peer_window = frame.window
        if frame.kind in RELIABLE:
            # What this end keeps is bounded: the window's frames early and
            # as many again held (the sender's probes of a shut window),
            # whatever the sender does.
            if (self._expected <= frame.seq < self._expected + self._window
                    and len(self._early) + len(self._held) < 2 * self._window):
                self._early.setdefault(frame.seq, (frame.kind, frame.payload))
            while self._expected in self._early and not self.closed:
                self._held.append(self._early.pop(self._expected))
                self._expected += 1
            self._deliver()
            # Duplicates and frames past the window are acked too: the
            # other side's ACK was lost, or it learns the window.
            self.ack()
        if not self.closed:
            self._pump()
            if self.fin_sent and self.fin_received and not self._unacked and not self._waiting:
                self._close(None)

    def _deliver(self):
        while self._held and not self.delivery_paused and not self.closed:
            kind, payload = self._held.popleft()
            if kind == FIN:
                self.fin_received = True
            self._on_frame(kind, payload)

    def pause_delivery(self):
        """Hold what arrives (up to the window, then the other side waits) until :meth:`resume_delivery`."""
        self.delivery_paused = True

    def resume_delivery(self):
        """Deliver what was held, and tell the other side its window is open again."""
        if not self.delivery_paused:
            return
        self.delivery_paused = False
        self._deliver()
        if not self.closed:
            self.ack()
            if self.fin_sent and self.fin_received and not self._unacked and not self._waiting:
                self._close(None)

    # -- ending -------------------------------------------------------------

    def _idle(self):
        self._idle_call = None
        self.reset(REPLY_TTL_EXPIRED)

    def _close(self, code):
        if self.closed:
            return
        self.closed = True
        for call in (self._retransmit_call, self._idle_call, self._linger_call):
            if call is not None and call.active():
                call.cancel()
        self._unacked.clear()
        self._waiting.clear()
        self._early.clear()
        self._held.clear()
        self._on_closed(code)


@implementer(IPushProducer)
class DeliveryProducer:
    """
    What a stream delivers, as a producer for the transport it is written
    to: registered with ``transport.registerProducer(DeliveryProducer(
    endpoint), True)``, a transport whose buffer is full pauses delivery,
    so a reader that never reads holds at most the window's frames.
    """

    def __init__(self, endpoint):
        self._endpoint = endpoint

    def pauseProducing(self):
        self._endpoint.pause_delivery()

    def resumeProducing(self):
        self._endpoint.resume_delivery()

    def stopProducing(self):
        pass
