"""
Stream frames: ordered, reliable byte streams carried through the mixnet
between a client's SOCKS5 port and a ``socks5`` service provider.

::

    frame = version u8 || kind u8 || session(16) || stream u32 || seq u32
            || ack u32 || window u16 || surbs u16 || payload

``seq`` numbers the reliable frames of one direction of one stream (OPEN,
OPENED, DATA, FIN each take one); ``ack`` is the next ``seq`` the sender
expects from the other side (cumulative); ``window`` is how many frames
past ``ack`` it will take; ``surbs`` is, from the provider, how many reply
blocks of the session it holds (the client tops them up when low).
Written by hand: nymprov's own format, no library offers it.
"""

import struct
from dataclasses import dataclass

STREAM_VERSION = 1
SESSION_LENGTH = 16
_HEAD = struct.Struct(">BB16sIIIHH")
STREAM_HEADER_LENGTH = _HEAD.size  # 34
MAX_SEQ = 0xFFFFFFFF
MAX_HOST_LENGTH = 255
#: Bytes of an ACK's selective-ACK bitmap at most: frames up to 1,024 past ``ack``.
MAX_SACK_LENGTH = 128

OPEN = 1  # client -> provider: port u16 || host length u8 || host
OPENED = 2  # provider -> client: the TCP connection is up
DATA = 3
FIN = 4  # no more data in this direction (half-close)
RESET = 5  # payload: a SOCKS5 reply code saying why (not reliable)
ACK = 6  # the header's ack and window; payload: a selective-ACK bitmap (optional)
SURBS = 7  # client -> provider: reply blocks for the session ride with it
MORE_SURBS = 8  # provider -> client: "window" is how many more it wants

KINDS = frozenset(range(OPEN, MORE_SURBS + 1))
#: Kinds that take a sequence number and are retransmitted until acked.
RELIABLE = frozenset((OPEN, OPENED, DATA, FIN))

# SOCKS5 reply codes (RFC 1928), also the reasons of a RESET.
REPLY_SUCCEEDED = 0
REPLY_GENERAL_FAILURE = 1
REPLY_NOT_ALLOWED = 2
REPLY_NETWORK_UNREACHABLE = 3
REPLY_HOST_UNREACHABLE = 4
REPLY_CONNECTION_REFUSED = 5
REPLY_TTL_EXPIRED = 6
REPLY_COMMAND_NOT_SUPPORTED = 7
REPLY_ADDRESS_TYPE_NOT_SUPPORTED = 8


class MalformedStreamFrame(ValueError):
    """Bytes that are not a stream frame."""

    reason = "malformed_stream_frame"


@dataclass(frozen=True)
class StreamFrame:
    kind: int
    session: bytes
    stream: int
    seq: int = 0
    ack: int = 0
    window: int = 0
    surbs: int = 0
    payload: bytes = b""

    def to_bytes(self):
        """The frame's encoding."""
        if self.kind not in KINDS:
            raise ValueError(f"unknown stream frame kind {self.kind}")
        return _HEAD.pack(STREAM_VERSION, self.kind, self.session, self.stream, self.seq, self.ack,
                          self.window, self.surbs) + self.payload

    @classmethod
    def from_bytes(cls, data):
        """:raises MalformedStreamFrame: if ``data`` is not a frame."""
        if len(data) < STREAM_HEADER_LENGTH:
            raise MalformedStreamFrame("shorter than a stream frame header")
        version, kind, session, stream, seq, ack, window, surbs = _HEAD.unpack_from(data)
        if version != STREAM_VERSION:
            raise MalformedStreamFrame(f"unknown stream frame version {version}")
        if kind not in KINDS:
            raise MalformedStreamFrame(f"unknown stream frame kind {kind}")
        payload = bytes(data[STREAM_HEADER_LENGTH:])
        if kind not in (OPEN, DATA, RESET, ACK) and payload:
            raise MalformedStreamFrame(f"frame kind {kind} carries no payload")
        if kind == ACK and len(payload) > MAX_SACK_LENGTH:
            raise MalformedStreamFrame("selective ACK longer than its limit")
        return cls(kind, bytes(session), stream, seq, ack, window, surbs, payload)


def encode_open(host, port):
    """:returns: the payload of an OPEN frame to ``host`` (text) and ``port``."""
    name = host.encode("idna") if not host.isascii() else host.encode("ascii")
    if not 0 < len(name) <= MAX_HOST_LENGTH:
        raise ValueError("a host name is 1 to 255 bytes")
    if not 0 < port <= 0xFFFF:
        raise ValueError(f"port {port} out of range")
    return struct.pack(">HB", port, len(name)) + name


def decode_open(payload):
    """
    :returns: ``(host, port)`` of an OPEN payload; the host lower-cased text.
    :raises MalformedStreamFrame: if it is not one.
    """
    if len(payload) < 3:
        raise MalformedStreamFrame("OPEN shorter than its header")
    port, length = struct.unpack_from(">HB", payload)
    name = payload[3:]
    if port == 0 or length == 0 or len(name) != length:
        raise MalformedStreamFrame("OPEN with no port, no host or a wrong host length")
    try:
        host = name.decode("ascii").lower()
    except UnicodeDecodeError:
        raise MalformedStreamFrame("OPEN host is not ASCII")
    if not all(c.isalnum() or c in "-._:" for c in host):
        raise MalformedStreamFrame("OPEN host has characters no host name has")
    return host, port


def encode_sack(ack, held):
    """
    :param held: the sequence numbers held past ``ack`` (``ack`` itself missing).
    :returns: an ACK payload: bit ``i`` (most significant first) set when
        frame ``ack + 1 + i`` is held; empty when none is; frames beyond
        the bitmap's limit are left out (they are sent again if need be).
    """
    offsets = [seq - ack - 1 for seq in held if 0 <= seq - ack - 1 < 8 * MAX_SACK_LENGTH]
    if not offsets:
        return b""
    bitmap = bytearray(max(offsets) // 8 + 1)
    for offset in offsets:
        bitmap[offset // 8] |= 0x80 >> (offset % 8)
    return bytes(bitmap)


def decode_sack(ack, payload):
    """:returns: the sequence numbers an ACK's bitmap says are held past ``ack``."""
    return [ack + 1 + 8 * index + bit for index, byte in enumerate(payload) for bit in range(8)
            if byte & (0x80 >> bit)]


def encode_reset(code):
    """:returns: a RESET payload: the SOCKS5 reply code ``code``."""
    return bytes([code])


def decode_reset(payload):
    """:returns: the SOCKS5 reply code of a RESET (general failure when absent)."""
    return payload[0] if len(payload) == 1 and payload[0] <= 8 and payload[0] else REPLY_GENERAL_FAILURE
