"""
X25519 key pairs of mix nodes and providers, and their base58 form.
"""

import os

import base58

from nymprov.sphinx.base58text import decode_32
from nymprov.sphinx.curve import clamp, x25519_base
from nymprov.sphinx.errors import InvalidRouting

KEY_SIZE = 32


class KeyPair:
    """
    A node's Sphinx key pair. The private scalar is kept clamped, the form
    the crate's ``PrivateKey`` has and libsodium's X25519 takes directly.
    """

    __slots__ = ("private_bytes", "public_bytes")

    def __init__(self, private_bytes: bytes):
        self.private_bytes = clamp(private_bytes)
        self.public_bytes = x25519_base(self.private_bytes)

    @classmethod
    def generate(cls) -> "KeyPair":
        """:returns: a fresh key pair from the operating system's RNG."""
        return cls(os.urandom(KEY_SIZE))

    @classmethod
    def from_private_bytes(cls, private: bytes) -> "KeyPair":
        """
        :param private: 32 bytes; clamped here, as the crate does.
        :raises ValueError: if ``private`` is not 32 bytes.
        """
        if not isinstance(private, bytes) or len(private) != KEY_SIZE:
            raise ValueError("a private key is 32 bytes")
        return cls(private)

    @property
    def public_base58(self) -> str:
        """The public key in base58 (Bitcoin alphabet), as Nym shows it."""
        return base58.b58encode(self.public_bytes).decode("ascii")

    def __repr__(self):
        # Never show the private half.
        return f"<KeyPair public={self.public_base58}>"


def public_key_from_base58(text: str) -> bytes:
    """
    :returns: the 32-byte public key that ``text`` encodes.
    :raises InvalidRouting: if ``text`` is not base58 of exactly 32 bytes.
    """
    return decode_32(text, InvalidRouting, "public key")
