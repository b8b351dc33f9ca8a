"""
The header's symmetric primitives: per-hop key derivation, the AES-CTR
stream and the truncated HMAC (SPHINX.md §3, §5, §6).
"""

import hmac
from dataclasses import dataclass
from hashlib import sha256

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from nymprov.sphinx import aesctr

HKDF_INFO = (
    b"Dwste mou enan moxlo arketa makru kai ena upomoxlio gia na ton "
    b"topothetisw kai tha kinisw thn gh."
)
ROUTING_KEYS_LENGTH = 256
STREAM_LENGTH = 360
MAC_SIZE = 16
_SHA256 = hashes.SHA256()


@dataclass(frozen=True, slots=True)
class RoutingKeys:
    """The four keys one hop derives from its shared secret."""

    stream_cipher_key: bytes
    header_integrity_hmac_key: bytes
    payload_key: bytes
    blinding_factor: bytes


def derive_routing_keys(shared_secret: bytes) -> RoutingKeys:
    """
    HKDF-SHA256 (zero salt, the crate's info string) split into the hop's
    keys. ``cryptography``'s HKDF measured 8 µs against 22 µs for the same
    construction written with ``hmac.digest``, so it is used.
    """
    okm = HKDF(algorithm=_SHA256, length=ROUTING_KEYS_LENGTH, salt=None, info=HKDF_INFO).derive(
        shared_secret
    )
    return RoutingKeys(okm[0:16], okm[16:32], okm[32:224], okm[224:256])


def stream_encrypt(key: bytes, data: bytes) -> bytes:
    """
    ``data`` XOR the header PRG of ``key``: AES-128-CTR from a zero IV. The
    crate's 64-bit big-endian counter equals the standard 128-bit one for the
    at most 23 blocks ever drawn.
    """
    return aesctr.encrypt(key, data)


def pseudorandom_bytes(key: bytes, length: int = STREAM_LENGTH) -> bytes:
    """:returns: ``length`` bytes of the header PRG keyed by ``key``."""
    return stream_encrypt(key, bytes(length))


# RFC 2104's inner and outer pads, applied with bytes.translate.
_INNER_PAD = bytes.maketrans(bytes(range(256)), bytes(b ^ 0x36 for b in range(256)))
_OUTER_PAD = bytes.maketrans(bytes(range(256)), bytes(b ^ 0x5C for b in range(256)))
_SHA256_BLOCK = 64


def hmac_sha256(key: bytes, message: bytes) -> bytes:
    """
    HMAC-SHA256 (RFC 2104) for keys of at most one block, written out on
    ``hashlib``: ``hmac.digest`` sets up an OpenSSL MAC context per call and
    measured 2.3 µs for a 360-byte beta, this 1.6 µs.
    """
    if len(key) > _SHA256_BLOCK:
        return hmac.digest(key, message, "sha256")
    block_key = key + bytes(_SHA256_BLOCK - len(key))
    inner = sha256(block_key.translate(_INNER_PAD))
    inner.update(message)
    return sha256(block_key.translate(_OUTER_PAD) + inner.digest()).digest()


def header_mac(key: bytes, beta: bytes) -> bytes:
    """:returns: HMAC-SHA256 of ``beta`` under ``key``, truncated to 16 bytes."""
    return hmac_sha256(key, beta)[:MAC_SIZE]


def xor_bytes(a: bytes, b: bytes) -> bytes:
    """:returns: ``a`` XOR ``b`` over ``len(a)`` bytes (``b`` may be longer)."""
    n = len(a)
    return (int.from_bytes(a, "big") ^ int.from_bytes(b[:n], "big")).to_bytes(n, "big")
