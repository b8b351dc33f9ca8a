"""
The LIONESS wide-block cipher as crate ``lioness`` 0.1.2 builds it from
ChaCha20 and keyed BLAKE2b (SPHINX.md §9.3).

Written by hand: no library offers LIONESS. The stream cipher and the hash
come from ``cryptography`` and ``hashlib``; only the four-round composition
is here.
"""

from hashlib import blake2b

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

KEY_SIZE = 192
# L is one hash output wide; the block must be strictly longer than that.
_LEFT = 32
_ZERO_NONCE = bytes(16)


class BlockSizeError(ValueError):
    """The block is not longer than 32 bytes."""


def _xor32(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "little") ^ int.from_bytes(b, "little")).to_bytes(
        32, "little"
    )


def _stream(key: bytes, data: bytes) -> bytes:
    # RFC 7539 ChaCha20 with a zero nonce and counter equals the crate's
    # original-variant ChaCha20 with its 8-byte zero nonce.
    return Cipher(algorithms.ChaCha20(key, _ZERO_NONCE), None).encryptor().update(data)


def _hash(key: bytes, data: bytes) -> bytes:
    return blake2b(data, digest_size=32, key=key).digest()


def _split(key: bytes, block: bytes):
    if len(block) <= _LEFT:
        raise BlockSizeError("Lioness block size must exceed 32 bytes.")
    if len(key) != KEY_SIZE:
        raise ValueError("a Lioness key is 192 bytes")
    return (key[0:32], key[32:96], key[96:128], key[128:192]), block[:_LEFT], block[_LEFT:]


def encrypt(key: bytes, block: bytes) -> bytes:
    """
    :returns: ``block`` encrypted under the 192-byte ``key``.
    :raises BlockSizeError: if ``block`` has 32 bytes or fewer.
    """
    (k1, k2, k3, k4), left, right = _split(key, block)
    right = _stream(_xor32(left, k1), right)
    left = _xor32(left, _hash(k2, right))
    right = _stream(_xor32(left, k3), right)
    left = _xor32(left, _hash(k4, right))
    return left + right


def decrypt(key: bytes, block: bytes) -> bytes:
    """
    :returns: ``block`` decrypted under the 192-byte ``key``.
    :raises BlockSizeError: if ``block`` has 32 bytes or fewer.
    """
    (k1, k2, k3, k4), left, right = _split(key, block)
    left = _xor32(left, _hash(k4, right))
    right = _stream(_xor32(left, k3), right)
    left = _xor32(left, _hash(k2, right))
    right = _stream(_xor32(left, k1), right)
    return left + right
