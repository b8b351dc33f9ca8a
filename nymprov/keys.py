"""The provider's long-term keys, kept as private files in its data directory."""

import binascii
import hashlib
import os
import secrets
import stat
from dataclasses import dataclass

import base58
from nacl.signing import SigningKey

from nymprov.errors import ConfigError
from nymprov.sphinx import KeyPair

IDENTITY_KEY_FILE = "identity.key"
SPHINX_KEY_FILE = "sphinx.key"

# A key file is one header line naming what it holds, then the 32-byte
# private key (the Ed25519 seed, or the X25519 scalar) as lowercase hex:
#
#     nymprov ed25519 identity v1
#     9f0c...(64 hex digits)
#
# Text, so an operator can tell the files apart and back them up by hand.
IDENTITY_HEADER = "nymprov ed25519 identity v1"
SPHINX_HEADER = "nymprov x25519 sphinx v1"

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600

# A key file is two short lines; anything much longer is not one of ours,
# and is not worth reading into memory.
_MAX_KEY_FILE_SIZE = 1024


@dataclass(frozen=True)
class ProviderKeys:
    """
    The provider's keys.

    :ivar identity: the Ed25519 identity key; its public half is the
        provider's identity.
    :ivar sphinx: the X25519 key pair with which Sphinx headers addressed to
        this provider are processed (a :class:`nymprov.sphinx.KeyPair`).
    """

    identity: SigningKey
    sphinx: KeyPair

    @property
    def identity_public_bytes(self):
        """The 32-byte Ed25519 public key: the provider's identity."""
        return self.identity.verify_key.encode()

    @property
    def replay_key_id(self):
        """
        The SHA-256 of the Sphinx public key: what a replay cache records
        its tags under, since tags mean something only for the key that
        produced them.
        """
        return hashlib.sha256(self.sphinx.public_bytes).digest()

    @property
    def identity_base58(self):
        """The identity public key in base58, as Nym prints node keys."""
        return base58.b58encode(self.identity_public_bytes).decode("ascii")


def ensure_private_dir(path):
    """
    Create the directory ``path`` (and its parents) if it is missing.

    A directory created here gets mode 0700; an existing one is left as the
    operator made it, because the key files protect themselves.

    :raises ConfigError: if ``path`` exists and is not a directory, or
        cannot be created.
    """
    if os.path.isdir(path):
        return
    if os.path.lexists(path):
        raise ConfigError(f"{path}: exists and is not a directory")
    try:
        os.makedirs(path, mode=PRIVATE_DIR_MODE)
        # makedirs applies the mode through the umask; make it exact.
        os.chmod(path, PRIVATE_DIR_MODE)
    except OSError as e:
        raise ConfigError(f"{path}: cannot create directory: {e.strerror}")


def write_file_atomically(path, data, mode=PRIVATE_FILE_MODE):
    """
    Write ``data`` to ``path`` so that readers see the old file or the whole
    new one, never a part; the file has ``mode`` from its creation on.

    :param str path: the file to create or replace.
    :param bytes data: its new contents.
    :param int mode: its permission bits (the umask may only narrow them).
    """
    directory = os.path.dirname(path) or "."
    temporary = os.path.join(
        directory, f".{os.path.basename(path)}.{secrets.token_hex(6)}.tmp"
    )
    # O_EXCL: never write through a file or link that someone else put there.
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise
    _fsync_directory(directory)


def _fsync_directory(directory):
    # Makes the rename itself durable; not every platform can open a
    # directory, and the file contents are already on disk, so failure here
    # is not worth stopping for.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_private_file(path, max_size=_MAX_KEY_FILE_SIZE):
    """
    Read a file that must be private to its owner.

    :raises ConfigError: naming ``path`` if it is missing, not a regular
        file, readable or writable by group or others, or too large.
    """
    try:
        # O_NONBLOCK: a FIFO planted at the path must not hang the start.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        raise ConfigError(f"{path}: cannot open: {e.strerror}")
    try:
        # Check the file we opened, not the name, so the check and the read
        # see the same file.
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"{path}: not a regular file")
        permissions = stat.S_IMODE(info.st_mode)
        if permissions & 0o077:
            raise ConfigError(
                f"{path}: mode {permissions:04o} lets group or others in;"
                f" run chmod 600 {path}"
            )
        if info.st_size > max_size:
            raise ConfigError(f"{path}: too large ({info.st_size} bytes)")
        return os.read(fd, max_size + 1)
    finally:
        os.close(fd)


def encode_key_file(header, private_bytes):
    """
    The contents of a key file holding the 32 bytes ``private_bytes``.
    """
    if len(private_bytes) != 32:
        raise ValueError("a private key is 32 bytes")
    return f"{header}\n{private_bytes.hex()}\n".encode("ascii")


def decode_key_file(path, header, contents):
    """
    The 32 private key bytes in a key file's ``contents``.

    :raises ConfigError: naming ``path`` if the contents are malformed.
    """
    try:
        text = contents.decode("ascii")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: malformed key file (not ASCII text)")
    lines = text.splitlines()
    if not lines or lines[0] != header:
        raise ConfigError(f"{path}: malformed key file (expected {header!r})")
    if len(lines) != 2 or len(lines[1]) != 64:
        raise ConfigError(f"{path}: malformed key file (expected 64 hex digits)")
    try:
        return binascii.unhexlify(lines[1])
    except binascii.Error:
        raise ConfigError(f"{path}: malformed key file (expected 64 hex digits)")


def _load_key_bytes(path, header):
    return decode_key_file(path, header, read_private_file(path))


def _load_identity(data_dir):
    path = os.path.join(data_dir, IDENTITY_KEY_FILE)
    return SigningKey(_load_key_bytes(path, IDENTITY_HEADER))


def _load_sphinx(data_dir):
    path = os.path.join(data_dir, SPHINX_KEY_FILE)
    raw = _load_key_bytes(path, SPHINX_HEADER)
    return KeyPair.from_private_bytes(raw)


def load_keys(data_dir):
    """
    Load the provider's keys from ``data_dir``.

    :rtype: ProviderKeys
    :raises ConfigError: naming the file if a key file is missing,
        malformed, or open to group or others.
    """
    return ProviderKeys(identity=_load_identity(data_dir), sphinx=_load_sphinx(data_dir))


def load_or_create_keys(data_dir):
    """
    Load the provider's keys from ``data_dir``, first creating the directory
    (mode 0700) and any missing key file (mode 0600) with a fresh key.

    :rtype: ProviderKeys
    :raises ConfigError: naming the file if an existing key file is
        malformed or open to group or others (it is never overwritten).
    """
    ensure_private_dir(data_dir)
    identity_path = os.path.join(data_dir, IDENTITY_KEY_FILE)
    if not os.path.lexists(identity_path):
        identity = SigningKey.generate()
        write_file_atomically(
            identity_path, encode_key_file(IDENTITY_HEADER, identity.encode())
        )
    sphinx_path = os.path.join(data_dir, SPHINX_KEY_FILE)
    if not os.path.lexists(sphinx_path):
        sphinx = KeyPair.generate()
        write_file_atomically(
            sphinx_path, encode_key_file(SPHINX_HEADER, sphinx.private_bytes)
        )
    # Read back what is on disk, so a fresh start and a restart take the
    # same path and a bad write shows up now rather than after a restart.
    return load_keys(data_dir)
