"""
Unwrapping packets at this node (final hops at a provider, forward hops at
a mix node or on the Loopix route), and the bytes in which a batch of them
and its results cross between the node and an unwrap worker process
(:mod:`nymprov.node.pool`, :mod:`nymprov.node.worker`).

Pure: no Twisted, so that a worker process starts quickly.

A batch travels as one frame: a 4-byte big-endian length, then a
``marshal`` body (a list of packets one way, a list of result rows the
other; a batch says first whether its packets are final or forward hops).
``marshal`` and not ``pickle``: loading it can build only plain
values, never call code, and both ends are the same interpreter.
"""

import marshal
from typing import NamedTuple

from nymprov.errors import PacketRefused
from nymprov.sphinx import FinalHop, ForwardHop, SphinxError, process_packet
from nymprov.sphinx import errors as sphinx_errors

LENGTH_PREFIX = 4
#: A frame larger than this is a broken peer, not a batch.
MAX_FRAME = 64 * 1024 * 1024

_OK, _SPHINX_ERROR, _REFUSED, _FORWARD, _FINAL_HOP = 0, 1, 2, 3, 4

#: What a batch's packets are, so which function the worker unwraps them with.
FINAL, FORWARD = 0, 1


class Unwrapped(NamedTuple):
    """A final hop's result: what the node needs to deliver it."""

    destination: bytes
    surb_id: bytes
    message: bytes
    replay_tag: bytes


class BatchFormatError(ValueError):
    """Bytes from the other end of an unwrap pipe are not a valid batch."""


def unwrap_final(packet, keypair):
    """
    Unwrap a packet that must be a final hop here.

    :returns: an :class:`Unwrapped`, or the typed error (returned, not
        raised, so that a batch carries it back from a worker).
    """
    try:
        hop = process_packet(packet, keypair)
        if not isinstance(hop, FinalHop):
            # A provider is not a mix layer: letting forward hops through
            # here would let a sender skip the mixing.
            raise PacketRefused("route_refused", "forward hop from the mix link")
        return Unwrapped(hop.destination, hop.surb_id, hop.message(), hop.replay_tag)
    except (SphinxError, PacketRefused) as e:
        return e


def unwrap_any(packet, keypair):
    """
    Unwrap a packet that may be a forward hop (a mix node's, or a client's
    on the Loopix route): the node decides what a final hop means.

    :returns: a ``ForwardHop``, a ``FinalHop`` or the typed Sphinx error
        (returned, not raised).
    """
    try:
        return process_packet(packet, keypair)
    except SphinxError as e:
        return e


UNWRAPPERS = {FINAL: unwrap_final, FORWARD: unwrap_any}


def unwrap_batch(kind, packets, keypair):
    """:returns: the results of ``packets`` of ``kind`` (FINAL or FORWARD), in order."""
    unwrap = UNWRAPPERS[kind]
    return [unwrap(packet, keypair) for packet in packets]


def frame(body):
    """:returns: ``body`` with its length prefix."""
    return len(body).to_bytes(LENGTH_PREFIX, "big") + body


def encode_packets(packets, kind=FINAL):
    """:returns: the frame of a batch of packets of ``kind`` (FINAL or FORWARD)."""
    return frame(marshal.dumps((kind, [bytes(packet) for packet in packets])))


def decode_packets(body):
    """
    :returns: ``(kind, packets)`` of a batch frame's body.
    :raises BatchFormatError: if it is not a kind and a list of byte strings.
    """
    try:
        batch = marshal.loads(body)
    except (ValueError, EOFError, TypeError) as e:
        raise BatchFormatError(f"undecodable batch: {e}") from None
    if type(batch) is not tuple or len(batch) != 2 or batch[0] not in UNWRAPPERS:
        raise BatchFormatError("a batch is a kind and its packets")
    kind, packets = batch
    if type(packets) is not list or not all(type(packet) is bytes for packet in packets):
        raise BatchFormatError("a batch is a list of packets")
    return kind, packets


def encode_outcomes(outcomes):
    """:returns: the frame of a batch of :func:`unwrap_final` or :func:`unwrap_any` results."""
    rows = []
    for outcome in outcomes:
        if isinstance(outcome, Unwrapped):
            rows.append((_OK, *outcome))
        elif isinstance(outcome, ForwardHop):
            rows.append((_FORWARD, outcome.packet, outcome.next_address, outcome.delay_ns, outcome.replay_tag))
        elif isinstance(outcome, FinalHop):
            rows.append((_FINAL_HOP, outcome.destination, outcome.surb_id, outcome.payload, outcome.replay_tag))
        elif isinstance(outcome, SphinxError):
            rows.append((_SPHINX_ERROR, type(outcome).__name__, str(outcome)))
        else:
            rows.append((_REFUSED, outcome.reason, outcome.detail))
    return frame(marshal.dumps(rows))


def _sphinx_error(name, text):
    error_class = getattr(sphinx_errors, name, None)
    if not (isinstance(error_class, type) and issubclass(error_class, SphinxError)):
        error_class = SphinxError
    return error_class(text)


def decode_outcomes(body):
    """
    :returns: the results of a batch frame's body, as :func:`unwrap_final`
        or :func:`unwrap_any` gave them (errors of the same class, reason and text).
    :raises BatchFormatError: if the body is malformed.
    """
    try:
        rows = marshal.loads(body)
    except (ValueError, EOFError, TypeError) as e:
        raise BatchFormatError(f"undecodable results: {e}") from None
    if type(rows) is not list:
        raise BatchFormatError("results are a list")
    outcomes = []
    for row in rows:
        if type(row) is not tuple or not row:
            raise BatchFormatError("a result is a non-empty tuple")
        kind, fields = row[0], row[1:]
        if kind == _OK and len(fields) == 4 and all(type(f) is bytes for f in fields):
            outcomes.append(Unwrapped(*fields))
        elif (kind == _FORWARD and len(fields) == 4 and type(fields[2]) is int
              and all(type(fields[i]) is bytes for i in (0, 1, 3))):
            outcomes.append(ForwardHop(*fields))
        elif kind == _FINAL_HOP and len(fields) == 4 and all(type(f) is bytes for f in fields):
            outcomes.append(FinalHop(*fields))
        elif kind == _SPHINX_ERROR and len(fields) == 2 and all(type(f) is str for f in fields):
            outcomes.append(_sphinx_error(*fields))
        elif kind == _REFUSED and len(fields) == 2 and all(type(f) is str for f in fields):
            outcomes.append(PacketRefused(*fields))
        else:
            raise BatchFormatError(f"malformed result of kind {kind!r}")
    return outcomes


class FrameReader:
    """
    Splits a byte stream into frame bodies.

    :raises BatchFormatError: from :meth:`feed`, for a frame longer than
        :data:`MAX_FRAME`.
    """

    def __init__(self):
        self._buffer = bytearray()

    @property
    def buffered(self):
        """Bytes received that do not yet complete a frame."""
        return len(self._buffer)

    def feed(self, data):
        """:returns: the bodies of the frames completed by ``data``."""
        buffer = self._buffer
        buffer += data
        bodies = []
        start = 0
        # Through a view, so that a body is copied once, not twice.
        with memoryview(buffer) as view:
            while len(buffer) - start >= LENGTH_PREFIX:
                length = int.from_bytes(view[start:start + LENGTH_PREFIX], "big")
                if length > MAX_FRAME:
                    raise BatchFormatError(f"frame of {length} bytes")
                end = start + LENGTH_PREFIX + length
                if len(buffer) < end:
                    break
                bodies.append(view[start + LENGTH_PREFIX:end].tobytes())
                start = end
        del buffer[:start]
        return bodies
