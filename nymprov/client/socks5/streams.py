"""
The client's half of mixnet streams: one session (a random id) with a
``socks5`` service provider, its streams, and the SURBs it keeps there.

Each frame to the provider is a service request (``nymprov.backends.surbreply``)
carrying reply blocks: one with every frame, so that each frame coming
back is paid for by the ACK that answers it; more with an OPEN and
whenever the provider's count (in every frame it sends) falls low.
"""

import os

from twisted.logger import Logger

from nymprov.backends.surbreply import (
    MalformedReply,
    decode_fragment,
    encode_service_request,
    split_fragments,
)
from nymprov.client.services import REQUEST_CHUNK_SIZE
from nymprov.metrics import Counters
from nymprov.net.mixstream import StreamEndpoint
from nymprov.wire.envelope import MalformedEnvelope, decode_envelope, encode_envelope
from nymprov.wire.streams import (
    MORE_SURBS,
    OPEN,
    STREAM_HEADER_LENGTH,
    SURBS,
    MalformedStreamFrame,
    StreamFrame,
)

_REQUEST_HEAD_LENGTH = 36  # reply key, SURB count, SURB length (surbreply._REQUEST_HEAD)


class MixStreams:
    """
    Streams to one ``socks5`` service provider over ``client`` (a
    :class:`nymprov.client.NymClient`).

    :param int open_surbs: reply blocks sent with an OPEN.
    :param int low_surbs: when the provider holds fewer, send ``topup`` more.
    """

    log = Logger()

    def __init__(self, client, service_identity, clock, *, open_surbs=24, low_surbs=64, topup=32,
                 rto=3.0, window=64, idle_timeout=120.0):
        self._client = client
        self._service = client.topology.provider(service_identity)
        self._clock = clock
        self.session = os.urandom(16)
        self.open_surbs = open_surbs
        self.low_surbs = low_surbs
        self.topup = topup
        self.rto = rto
        self.window = window
        self.idle_timeout = idle_timeout
        self.counters = Counters()
        self.streams = {}  # stream id -> StreamEndpoint
        self._on_received = {}  # stream id -> callable
        self._next_id = 1
        self._last_topup = None
        self._surb_length = None
        client.add_stored_handler(self._take)

    @property
    def up_chunk(self):
        """Stream bytes per frame that fit one packet beside one reply block."""
        if self._surb_length is None:
            self._surb_length = len(self._new_surb().to_bytes())
        return REQUEST_CHUNK_SIZE - _REQUEST_HEAD_LENGTH - self._surb_length - STREAM_HEADER_LENGTH

    def _new_surb(self):
        client = self._client
        return client.router.surb_to_self(client.keys.identity_public_bytes)

    def open(self, on_frame, on_closed, on_received=None):
        """
        :param on_received: ``() -> None``, called after every frame of the
            stream is taken (ACKs too: they free the window, and a caller
            that stopped reading its program must learn it may go on).
        :returns: ``(stream id, StreamEndpoint)`` of a new stream; the caller
            sends its OPEN.
        """
        stream_id = self._next_id
        self._next_id = (self._next_id % 0xFFFFFFFF) + 1

        def transmit(kind, seq, ack, window, payload):
            surbs = self.open_surbs if kind == OPEN else 1
            self.send_frame(StreamFrame(kind, self.session, stream_id, seq, ack, window, 0, payload), surbs)

        def closed(code):
            self.streams.pop(stream_id, None)
            self._on_received.pop(stream_id, None)
            self.counters.incr("socks5.streams_closed", "done" if code is None else f"reset_{code}")
            on_closed(code)

        endpoint = StreamEndpoint(self._clock, transmit, on_frame, closed, rto=self.rto, window=self.window,
                                  idle_timeout=self.idle_timeout)
        self.streams[stream_id] = endpoint
        if on_received is not None:
            self._on_received[stream_id] = on_received
        return stream_id, endpoint

    def send_frame(self, frame, surbs=1):
        """Queue ``frame`` with ``surbs`` fresh reply blocks for the client's outgoing stream."""
        client = self._client
        blocks = [self._new_surb() for _ in range(surbs)]
        data = encode_service_request(blocks, frame.to_bytes())
        fragments = split_fragments(os.urandom(16), data, REQUEST_CHUNK_SIZE)
        service = self._service

        def builder(fragment):
            return lambda: client.router.forward(encode_envelope(fragment), service.identity, service)

        d = client.queue_packets([builder(f) for f in fragments])
        d.addErrback(lambda f: self.counters.incr("socks5.dropped", "queue"))
        if not client.running:
            client.stream.flush_now()

    def _take(self, stored):
        try:
            fragment = decode_fragment(decode_envelope(stored).body, error=MalformedReply)
            if fragment.count != 1:
                return False
            frame = StreamFrame.from_bytes(fragment.chunk)
        except (MalformedEnvelope, MalformedReply, MalformedStreamFrame):
            return False
        if frame.session != self.session:
            return False
        self.counters.incr("socks5.frames_received")
        if frame.kind == MORE_SURBS or frame.surbs < self.low_surbs:
            self._top_up()
        endpoint = self.streams.get(frame.stream)
        if endpoint is not None:
            endpoint.receive(frame)
            after = self._on_received.get(frame.stream)
            if after is not None:
                after()
        else:
            self.counters.incr("socks5.dropped", "unknown_stream")
        return True

    def _top_up(self):
        now = self._clock.seconds()
        # One top-up per half RTO: the count in frames lags what is on its way.
        if self._last_topup is not None and now - self._last_topup < self.rto / 2:
            return
        self._last_topup = now
        self.counters.incr("socks5.surb_topups")
        self.send_frame(StreamFrame(SURBS, self.session, 0), self.topup)

    def close(self):
        """Reset every stream (the client is stopping)."""
        for endpoint in list(self.streams.values()):
            endpoint.reset()
