"""
The mix-link frame codec: Nym's header plus one fixed-size Sphinx packet.

A frame is ``[version=7, size_tag, packet_type]`` followed by exactly one
Sphinx packet of the size the tag names (DESIGN.md §4).  A first byte below
7 is the legacy two-byte header ``[size_tag, packet_type]``.  Version 8, as
in Nym's key-rotation release, adds a fourth byte, the key rotation: which
of the node's Sphinx keys the packet was built for (1: the key of an odd
epoch, 2: of an even one, 0: not said), so the node unwraps it once.  Frames follow
each other with no other length prefix, so a bad header leaves no way to
find the next frame: the decoder refuses it and stays refused.

Pure bytes in, bytes out; no Twisted.
"""

from dataclasses import dataclass

from nymprov.errors import NymProvError
from nymprov.sphinx.params import PacketSize

FRAME_VERSION = 7
KEY_ROTATION_FRAME_VERSION = 8
VERSIONED_HEADER_LENGTH = 3
KEY_ROTATION_HEADER_LENGTH = 4
LEGACY_HEADER_LENGTH = 2

#: The key-rotation byte of a version 8 header (Nym's values).
ROTATION_UNKNOWN = 0
ROTATION_ODD = 1
ROTATION_EVEN = 2

PACKET_TYPE_SPHINX = 0
# Known but refused: Nym's deprecated "vpn" mode and Outfox packets.
PACKET_TYPE_VPN = 1
PACKET_TYPE_OUTFOX = 2

_REFUSED_TYPE_NAMES = {PACKET_TYPE_VPN: "vpn", PACKET_TYPE_OUTFOX: "outfox"}


class FrameError(NymProvError):
    """A frame header that this node does not accept; the peer is cut off."""

    reason = "bad_frame"

    #: Whole frames that came before the bad header in the same ``feed``:
    #: they are good, and the reader still owes them a fate.
    frames_before = ()

    def __init__(self, value, detail):
        super().__init__(detail)
        self.value = value


class UnknownVersion(FrameError):
    """The version byte is above 8: a future frame format."""

    reason = "unknown_version"


class UnknownKeyRotation(FrameError):
    """The key-rotation byte of a version 8 header is not 0, 1 or 2."""

    reason = "unknown_key_rotation"


class UnknownSizeTag(FrameError):
    """The size tag names no Sphinx packet size."""

    reason = "unknown_size_tag"


class UnknownPacketType(FrameError):
    """The packet type is not Sphinx (vpn, Outfox, or unknown)."""

    reason = "unknown_packet_type"


@dataclass(frozen=True)
class Frame:
    """
    One Sphinx packet received over the mix link, and the key rotation its
    header named (:data:`ROTATION_UNKNOWN` for older headers).
    """

    size: PacketSize
    packet: bytes
    key_rotation: int = ROTATION_UNKNOWN


def rotation_of_epoch(epoch):
    """:returns: the key-rotation byte of a packet built for ``epoch``'s keys."""
    return ROTATION_ODD if epoch % 2 else ROTATION_EVEN


def encode_frame(packet, key_rotation=ROTATION_UNKNOWN):
    """
    Frame ``packet``: with the version 8 header if ``key_rotation`` is
    known, else with today's three-byte header (which every peer reads).

    :param bytes packet: a whole Sphinx packet of one of the five sizes.
    :param int key_rotation: 0, 1 or 2 (see :func:`rotation_of_epoch`).
    :returns: the header followed by ``packet``.
    :raises ValueError: if ``len(packet)`` is no packet size, or the
        rotation is not 0, 1 or 2 (bugs in the caller, not bad input).
    """
    size = PacketSize.from_packet_length(len(packet))
    if key_rotation == ROTATION_UNKNOWN:
        return bytes((FRAME_VERSION, size.tag, PACKET_TYPE_SPHINX)) + packet
    if key_rotation not in (ROTATION_ODD, ROTATION_EVEN):
        raise ValueError(f"key rotation {key_rotation!r} is not 0, 1 or 2")
    return bytes((KEY_ROTATION_FRAME_VERSION, size.tag, PACKET_TYPE_SPHINX, key_rotation)) + packet


def _check_size_tag(tag):
    try:
        return PacketSize.from_tag(tag)
    except ValueError as e:
        raise UnknownSizeTag(tag, str(e)) from None


def _check_packet_type(packet_type):
    if packet_type != PACKET_TYPE_SPHINX:
        name = _REFUSED_TYPE_NAMES.get(packet_type, "unknown")
        raise UnknownPacketType(
            packet_type, f"refused packet type {packet_type} ({name})"
        )


def _parse_header(view, start, end):
    """
    Check the header at ``view[start:end]`` byte by byte, as far as it has
    arrived, so that a bad peer is refused before its packet is buffered.

    :returns: ``(header_length, size, key_rotation)`` once the header is
        complete, or ``None`` while it is incomplete.
    :raises FrameError: as soon as a byte that has arrived is bad.
    """
    available = end - start
    first = view[start]
    if first > KEY_ROTATION_FRAME_VERSION:
        raise UnknownVersion(first, f"unknown frame version {first}")
    if first < FRAME_VERSION:
        size = _check_size_tag(first)
        if available < LEGACY_HEADER_LENGTH:
            return None
        _check_packet_type(view[start + 1])
        return LEGACY_HEADER_LENGTH, size, ROTATION_UNKNOWN
    if available < 2:
        return None
    size = _check_size_tag(view[start + 1])
    if available < VERSIONED_HEADER_LENGTH:
        return None
    _check_packet_type(view[start + 2])
    if first == FRAME_VERSION:
        return VERSIONED_HEADER_LENGTH, size, ROTATION_UNKNOWN
    if available < KEY_ROTATION_HEADER_LENGTH:
        return None
    rotation = view[start + 3]
    if rotation > ROTATION_EVEN:
        raise UnknownKeyRotation(rotation, f"unknown key rotation {rotation}")
    return KEY_ROTATION_HEADER_LENGTH, size, rotation


class FrameDecoder:
    """
    Turns a stream of bytes, split anywhere, into ``Frame`` objects.

    Input is appended to one ``bytearray`` and consumed from the front once
    per ``feed``; CPython deletes a bytearray's prefix without moving the
    rest, so the cost stays linear in the bytes received, and each packet is
    copied out exactly once.
    """

    def __init__(self):
        self._buffer = bytearray()
        self._error = None

    def feed(self, data):
        """
        Add ``data`` and return every frame it completes.

        :param bytes data: the next bytes from the connection.
        :returns: a list of ``Frame``, possibly empty.
        :raises FrameError: for a bad header, with the whole frames before
            it as ``frames_before``; every later call raises it again (then
            with none), since the stream cannot be resynchronised.
        """
        if self._error is not None:
            # The frames before it were handed over with the first raise.
            self._error.frames_before = ()
            raise self._error
        buffer = self._buffer
        buffer += data
        frames = []
        consumed = 0
        end = len(buffer)
        try:
            with memoryview(buffer) as view:
                while consumed < end:
                    header = _parse_header(view, consumed, end)
                    if header is None:
                        break
                    header_length, size, rotation = header
                    packet_start = consumed + header_length
                    packet_end = packet_start + size.packet_size
                    if packet_end > end:
                        break
                    frames.append(
                        Frame(size, view[packet_start:packet_end].tobytes(), rotation)
                    )
                    consumed = packet_end
        except FrameError as e:
            self._error = e
            self._buffer = bytearray()
            e.frames_before = tuple(frames)
            raise
        del buffer[:consumed]
        return frames

    @property
    def buffered(self):
        """The number of bytes held for an incomplete frame."""
        return len(self._buffer)
