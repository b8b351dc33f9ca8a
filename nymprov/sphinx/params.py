"""
Sizes and constants of the Sphinx packet format (SPHINX.md §1, DESIGN.md §4).
"""

import enum

SECURITY_PARAMETER = 16
MAX_PATH_LENGTH = 5
GROUP_ELEMENT_SIZE = 32
NODE_ADDRESS_LENGTH = 32
DESTINATION_ADDRESS_LENGTH = 32
IDENTIFIER_LENGTH = 16
HEADER_SIZE = 348
PAYLOAD_OVERHEAD_SIZE = 17

# Header layout (SPHINX.md §1, §7): alpha || gamma || beta.
MAC_SIZE = 16
BETA_SIZE = 300
HOP_BLOCK_SIZE = 60  # one hop's routing info plus its MAC: the filler step
DELAY_LENGTH = 8
VERSION_BYTES = b"\x00\x01\x00"  # sphinx-packet 0.1.0, written but never checked
FORWARD_HOP_FLAG = 1
FINAL_HOP_FLAG = 2
MIN_PACKET_SIZE = HEADER_SIZE + PAYLOAD_OVERHEAD_SIZE
# Lioness needs a block longer than one 32-byte hash output.
LIONESS_MIN_BLOCK = 33
PAYLOAD_KEY_SIZE = 192
REPLAY_TAG_SIZE = 16
MAX_DELAY_NS = 2**64 - 1


class PacketSize(enum.Enum):
    """
    The packet sizes of Nym's mix link, by their frame size tag.

    ``plaintext`` is the largest message the payload carries; the payload is
    that plus the 17-byte overhead; the packet adds the 348-byte header.
    """

    REGULAR = (1, 2048)
    ACK = (2, 16 + 5)
    EXTENDED32 = (3, 32768)
    EXTENDED8 = (4, 512)
    EXTENDED16 = (5, 16384)

    def __init__(self, tag, plaintext):
        self.tag = tag
        self.plaintext = plaintext
        self.payload_size = plaintext + PAYLOAD_OVERHEAD_SIZE
        self.packet_size = HEADER_SIZE + self.payload_size

    @classmethod
    def from_tag(cls, tag):
        """
        :returns: the size with frame tag ``tag``.
        :raises ValueError: for an unknown tag.
        """
        size = _SIZES_BY_TAG.get(tag)
        if size is None:
            raise ValueError(f"unknown packet size tag {tag}")
        return size

    @classmethod
    def is_packet_length(cls, length):
        """Whether some size's whole packet is ``length`` bytes."""
        return length in _SIZES_BY_LENGTH

    @classmethod
    def from_packet_length(cls, length):
        """
        :returns: the size whose whole packet is ``length`` bytes.
        :raises ValueError: if no size has that length.
        """
        size = _SIZES_BY_LENGTH.get(length)
        if size is None:
            raise ValueError(f"no packet size of {length} bytes")
        return size


# Dictionaries, not a scan of the enum: the mix link looks a size up for
# every frame.
_SIZES_BY_TAG = {size.tag: size for size in PacketSize}
_SIZES_BY_LENGTH = {size.packet_size: size for size in PacketSize}

DEFAULT_PACKET_SIZE = PacketSize.REGULAR
DEFAULT_PAYLOAD_SIZE = DEFAULT_PACKET_SIZE.payload_size
