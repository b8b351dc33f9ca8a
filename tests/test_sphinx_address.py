"""
Tests of nymprov.sphinx.address: Nym's 32-byte encoding of socket addresses.
"""

import ipaddress

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from nymprov.sphinx import (
    InvalidAddress,
    InvalidRouting,
    address_from_base58,
    address_to_base58,
    decode_address,
    encode_address,
)

PORTS = st.integers(1, 65535)


class AddressTests(SynchronousTestCase):
    """Encoding and decoding node addresses."""

    @settings(max_examples=200)
    @given(st.ip_addresses(), PORTS)
    def test_round_trip(self, ip, port):
        """Every IPv4 and IPv6 address and port round-trips through 32 bytes."""
        encoded = encode_address(str(ip), port)
        self.assertEqual(len(encoded), 32)
        host, decoded_port = decode_address(encoded)
        self.assertEqual((ipaddress.ip_address(host), decoded_port), (ip, port))
        self.assertEqual(address_from_base58(address_to_base58(encoded)), encoded)

    def test_layout(self):
        """The bytes are family, big-endian port, octets, zero padding."""
        self.assertEqual(encode_address("1.2.3.4", 0x0102), b"\x04\x01\x02\x01\x02\x03\x04" + bytes(25))
        v6 = encode_address("::1", 1789)
        self.assertEqual(v6[:3], b"\x06\x06\xfd")
        self.assertEqual(v6[3:19], bytes(15) + b"\x01")
        self.assertEqual(v6[19:], bytes(13))

    def test_bad_encode(self):
        """Host names, bad literals and ports outside 1..65535 are refused."""
        for host, port in (("example.com", 1), ("1.2.3", 1), ("", 1), ("1.2.3.4", 0), ("1.2.3.4", 65536), ("::1", -1)):
            self.assertRaises(InvalidAddress, encode_address, host, port)

    def test_bad_decode(self):
        """A wrong length, family, zero port or non-zero padding is refused."""
        good = encode_address("1.2.3.4", 80)
        for bad in (
            good[:31],
            good + b"\0",
            b"\x05" + good[1:],
            b"\x00" + good[1:],
            good[:1] + b"\0\0" + good[3:],
            good[:31] + b"\x01",
            good[:7] + b"\x01" + good[8:],
        ):
            error = self.assertRaises(InvalidAddress, decode_address, bad)
            self.assertIsInstance(error, InvalidRouting)
            self.assertEqual(error.reason, "invalid_address")

    @settings(max_examples=200)
    @given(st.binary(max_size=40))
    def test_garbage(self, data):
        """Arbitrary bytes decode to an address or raise InvalidAddress."""
        try:
            host, port = decode_address(data)
        except InvalidAddress:
            return
        self.assertEqual(decode_address(encode_address(host, port)), (host, port))

    def test_bad_base58(self):
        """Non-base58 text or a wrong decoded length is InvalidAddress."""
        for text in ("0", "abc", "é"):
            self.assertRaises(InvalidAddress, address_from_base58, text)
