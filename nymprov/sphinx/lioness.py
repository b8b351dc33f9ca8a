"""
The LIONESS wide-block cipher as crate ``lioness`` 0.1.2 builds it from
ChaCha20 and keyed BLAKE2b (SPHINX.md §9.3).

Written by hand: no library offers LIONESS. The stream cipher comes from
libsodium or ``cryptography`` (:mod:`nymprov.sphinx.chacha`), the hash from
``hashlib``; only the four-round composition is here.
"""

from hashlib import blake2b

from nymprov.sphinx.chacha import xor as _stream

KEY_SIZE = 192
# L is one hash output wide; the block must be strictly longer than that.
_LEFT = 32


class BlockSizeError(ValueError):
    """The block is not longer than 32 bytes."""


def _check(key: bytes, block: bytes) -> None:
    if len(block) <= _LEFT:
        raise BlockSizeError("Lioness block size must exceed 32 bytes.")
    if len(key) != KEY_SIZE:
        raise ValueError("a Lioness key is 192 bytes")


# The halves are XORed as integers: one C call each way instead of a loop
# over bytes. L stays an int between rounds; only stream keys become bytes.


def encrypt(key: bytes, block: bytes) -> bytes:
    """
    :returns: ``block`` encrypted under the 192-byte ``key``.
    :raises BlockSizeError: if ``block`` has 32 bytes or fewer.
    """
    _check(key, block)
    left = int.from_bytes(block[:_LEFT], "little")
    right = _stream((left ^ int.from_bytes(key[0:32], "little")).to_bytes(32, "little"), block[_LEFT:])
    left ^= int.from_bytes(blake2b(right, digest_size=32, key=key[32:96]).digest(), "little")
    right = _stream((left ^ int.from_bytes(key[96:128], "little")).to_bytes(32, "little"), right)
    left ^= int.from_bytes(blake2b(right, digest_size=32, key=key[128:192]).digest(), "little")
    return left.to_bytes(32, "little") + right


def decrypt(key: bytes, block: bytes) -> bytes:
    """
    :returns: ``block`` decrypted under the 192-byte ``key``.
    :raises BlockSizeError: if ``block`` has 32 bytes or fewer.
    """
    _check(key, block)
    right = block[_LEFT:]
    left = int.from_bytes(block[:_LEFT], "little") ^ int.from_bytes(
        blake2b(right, digest_size=32, key=key[128:192]).digest(), "little"
    )
    right = _stream((left ^ int.from_bytes(key[96:128], "little")).to_bytes(32, "little"), right)
    left ^= int.from_bytes(blake2b(right, digest_size=32, key=key[32:96]).digest(), "little")
    right = _stream((left ^ int.from_bytes(key[0:32], "little")).to_bytes(32, "little"), right)
    return left.to_bytes(32, "little") + right
