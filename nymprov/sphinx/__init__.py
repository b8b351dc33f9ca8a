"""
The Sphinx packet format, byte-compatible with Nym's ``sphinx-packet`` 0.1.0.

Pure functions over bytes; nothing here imports Twisted.
"""

from nymprov.sphinx.address import (
    address_from_base58,
    address_to_base58,
    decode_address,
    encode_address,
)
from nymprov.sphinx.curve import ladder
from nymprov.sphinx.delays import poisson_delays
from nymprov.sphinx.errors import (
    BadMAC,
    DegenerateAlpha,
    InvalidAddress,
    InvalidHeader,
    InvalidPacket,
    InvalidPayload,
    InvalidRouting,
    InvalidSURB,
    NonCanonicalAlpha,
    ReplayedPacket,
    SphinxError,
)
from nymprov.sphinx.keys import KeyPair, public_key_from_base58
from nymprov.sphinx.packet import FinalHop, ForwardHop, build_packet, process_packet
from nymprov.sphinx.params import DEFAULT_PAYLOAD_SIZE, PacketSize
from nymprov.sphinx.payload import recover_plaintext
from nymprov.sphinx.route import Destination, Node
from nymprov.sphinx.surb import SURB

__all__ = [
    "BadMAC",
    "DEFAULT_PAYLOAD_SIZE",
    "DegenerateAlpha",
    "Destination",
    "FinalHop",
    "ForwardHop",
    "InvalidAddress",
    "InvalidHeader",
    "InvalidPacket",
    "InvalidPayload",
    "InvalidRouting",
    "InvalidSURB",
    "KeyPair",
    "Node",
    "NonCanonicalAlpha",
    "PacketSize",
    "ReplayedPacket",
    "SURB",
    "SphinxError",
    "address_from_base58",
    "address_to_base58",
    "build_packet",
    "decode_address",
    "encode_address",
    "ladder",
    "poisson_delays",
    "process_packet",
    "public_key_from_base58",
    "recover_plaintext",
]
