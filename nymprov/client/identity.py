"""A client's keys, its Nym-style address, and its access token, as private files."""

import os
from dataclasses import dataclass

import base58
from nacl.public import PrivateKey
from nacl.signing import SigningKey

from nymprov.errors import ConfigError
from nymprov.keys import (
    decode_key_file,
    encode_key_file,
    ensure_private_dir,
    read_private_file,
    write_file_atomically,
)

IDENTITY_KEY_FILE = "identity.key"
ENCRYPTION_KEY_FILE = "encryption.key"
TOKEN_FILE = "token"

IDENTITY_HEADER = "nymprov client ed25519 identity v1"
ENCRYPTION_HEADER = "nymprov client x25519 encryption v1"
TOKEN_HEADER = "nymprov client access token v1"

_KEY_LENGTH = 32


class InvalidClientAddress(ValueError):
    """Text that is not ``identity.encryption@provider`` in base58."""

    reason = "invalid_client_address"


@dataclass(frozen=True)
class ClientAddress:
    """
    Where a client can be reached: its identity (also its Sphinx destination
    at its provider), its encryption key and its provider's identity, each
    32 bytes.
    """

    identity: bytes
    encryption: bytes
    provider: bytes

    def __post_init__(self):
        for name in ("identity", "encryption", "provider"):
            value = getattr(self, name)
            if not isinstance(value, bytes) or len(value) != _KEY_LENGTH:
                raise InvalidClientAddress(f"{name} must be {_KEY_LENGTH} bytes")

    def __str__(self):
        def b58(raw):
            return base58.b58encode(raw).decode("ascii")

        return f"{b58(self.identity)}.{b58(self.encryption)}@{b58(self.provider)}"

    @classmethod
    def parse(cls, text):
        """
        :raises InvalidClientAddress: naming what is wrong.
        """
        if not isinstance(text, str) or not text.isascii():
            raise InvalidClientAddress("an address is ASCII text")
        keys, at, provider = text.strip().partition("@")
        identity, dot, encryption = keys.partition(".")
        if not at or not dot:
            raise InvalidClientAddress("expected identity.encryption@provider")
        parts = []
        for name, part in (("identity", identity), ("encryption", encryption), ("provider", provider)):
            try:
                raw = base58.b58decode(part)
            except ValueError:
                raise InvalidClientAddress(f"{name}: not base58") from None
            if len(raw) != _KEY_LENGTH:
                raise InvalidClientAddress(f"{name}: not {_KEY_LENGTH} bytes")
            parts.append(raw)
        return cls(*parts)


@dataclass(frozen=True)
class ClientKeys:
    """
    :ivar identity: the ``nacl.signing.SigningKey`` (Ed25519).
    :ivar encryption: the ``nacl.public.PrivateKey`` (X25519).
    """

    identity: SigningKey
    encryption: PrivateKey

    @property
    def identity_public_bytes(self):
        """The 32-byte public identity key: the client's Sphinx destination."""
        return bytes(self.identity.verify_key)

    @property
    def encryption_public_bytes(self):
        """The 32-byte public X25519 key that senders encrypt to."""
        return bytes(self.encryption.public_key)

    def address(self, provider_identity):
        """:returns: the :class:`ClientAddress` at that provider."""
        return ClientAddress(self.identity_public_bytes, self.encryption_public_bytes, provider_identity)

    @classmethod
    def generate(cls):
        """Fresh keys, in memory only."""
        return cls(SigningKey.generate(), PrivateKey.generate())


def _load(path, header):
    return decode_key_file(path, header, read_private_file(path))


def load_or_create_client_keys(data_dir):
    """
    The client's keys in ``data_dir`` (created 0700), making any missing key
    file (0600) with a fresh key; existing files are never overwritten.

    :raises ConfigError: naming a malformed or group/world-readable file.
    """
    ensure_private_dir(data_dir)
    paths = {}
    for name, header, make in (
        (IDENTITY_KEY_FILE, IDENTITY_HEADER, lambda: SigningKey.generate().encode()),
        (ENCRYPTION_KEY_FILE, ENCRYPTION_HEADER, lambda: bytes(PrivateKey.generate())),
    ):
        path = os.path.join(data_dir, name)
        if not os.path.lexists(path):
            write_file_atomically(path, encode_key_file(header, make()))
        paths[name] = path
    return ClientKeys(
        SigningKey(_load(paths[IDENTITY_KEY_FILE], IDENTITY_HEADER)),
        PrivateKey(_load(paths[ENCRYPTION_KEY_FILE], ENCRYPTION_HEADER)),
    )


def save_token(data_dir, token):
    """Keep the 32-byte access token in ``data_dir`` (mode 0600)."""
    write_file_atomically(os.path.join(data_dir, TOKEN_FILE), encode_key_file(TOKEN_HEADER, token))


def load_token(data_dir):
    """
    :returns: the saved token, or ``None`` if there is none.
    :raises ConfigError: if the token file is malformed or not private.
    """
    path = os.path.join(data_dir, TOKEN_FILE)
    if not os.path.lexists(path):
        return None
    return _load(path, TOKEN_HEADER)


__all__ = [
    "ClientAddress", "ClientKeys", "ConfigError", "InvalidClientAddress",
    "load_or_create_client_keys", "load_token", "save_token",
]
