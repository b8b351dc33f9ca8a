"""
Nym's encoding of a socket address as a 32-byte node address
(DESIGN.md §4): family byte 4 or 6, big-endian port, IP octets, zero padding.

Port 0 is refused both ways: nothing can be reached there, so a header
naming it is as broken as one with a bad family byte, and refusing it here
gives a typed error instead of a failed connection later.
"""

import ipaddress

import base58

from nymprov.sphinx.base58text import decode_32
from nymprov.sphinx.errors import InvalidAddress
from nymprov.sphinx.params import NODE_ADDRESS_LENGTH

_FAMILY_LENGTHS = {4: 4, 6: 16}
_ADDRESS_CLASSES = {4: ipaddress.IPv4Address, 6: ipaddress.IPv6Address}


def encode_address(host: str, port: int) -> bytes:
    """
    :param host: an IPv4 or IPv6 literal (no host names: the header carries
        octets).
    :returns: the 32-byte node address.
    :raises InvalidAddress: for anything that is not an IP literal and a
        port in 1..65535.
    """
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise InvalidAddress("not an IP address literal") from None
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise InvalidAddress("port must be in 1..65535")
    encoded = bytes((ip.version,)) + port.to_bytes(2, "big") + ip.packed
    return encoded.ljust(NODE_ADDRESS_LENGTH, b"\0")


def decode_address(address: bytes) -> tuple:
    """
    :returns: ``(host, port)`` with ``host`` in its canonical text form.
    :raises InvalidAddress: for a wrong length, an unknown family byte, a
        zero port or non-zero padding.
    """
    if len(address) != NODE_ADDRESS_LENGTH:
        raise InvalidAddress(f"node address is {len(address)} bytes, expected 32")
    family = address[0]
    octets = _FAMILY_LENGTHS.get(family)
    if octets is None:
        raise InvalidAddress(f"unknown address family byte {family}")
    port = int.from_bytes(address[1:3], "big")
    if port == 0:
        raise InvalidAddress("port 0")
    end = 3 + octets
    if any(address[end:]):
        raise InvalidAddress("non-zero padding after the address")
    return str(_ADDRESS_CLASSES[family](bytes(address[3:end]))), port


def address_to_base58(address: bytes) -> str:
    """:returns: the 32 address bytes in base58, for display."""
    return base58.b58encode(address).decode("ascii")


def address_from_base58(text: str) -> bytes:
    """
    :returns: the 32 bytes ``text`` encodes (not checked to decode as a
        socket address; :func:`decode_address` does that).
    :raises InvalidAddress: if ``text`` is not base58 of exactly 32 bytes.
    """
    return decode_32(text, InvalidAddress, "address")
