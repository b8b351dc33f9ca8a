"""Tests for nymprov.keys: the provider's key files."""

import os
import stat

from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey
from twisted.trial.unittest import SynchronousTestCase

from nymprov import keys
from nymprov.errors import ConfigError
from nymprov.sphinx import KeyPair


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


class KeyFileFormatTests(SynchronousTestCase):
    """The key file codec."""

    @settings(max_examples=50)
    @given(st.binary(min_size=32, max_size=32))
    def test_round_trip(self, private):
        """Encoding then decoding a key file gives back the same 32 bytes."""
        encoded = keys.encode_key_file(keys.SPHINX_HEADER, private)
        self.assertEqual(
            keys.decode_key_file("sphinx.key", keys.SPHINX_HEADER, encoded), private
        )

    @settings(max_examples=100)
    @given(st.binary(max_size=200))
    def test_garbage_is_config_error(self, contents):
        """Arbitrary bytes decode to 32 bytes or raise ConfigError naming the file."""
        try:
            result = keys.decode_key_file("/d/identity.key", keys.IDENTITY_HEADER, contents)
        except ConfigError as e:
            self.assertIn("/d/identity.key", str(e))
        else:
            self.assertEqual(len(result), 32)

    def test_wrong_header(self):
        """A Sphinx key file is not accepted as an identity key file."""
        encoded = keys.encode_key_file(keys.SPHINX_HEADER, b"\x01" * 32)
        with self.assertRaises(ConfigError):
            keys.decode_key_file("x", keys.IDENTITY_HEADER, encoded)

    def test_short_key(self):
        """A key of other than 64 hex digits is refused."""
        contents = (keys.IDENTITY_HEADER + "\n" + "ab" * 31 + "\n").encode()
        with self.assertRaises(ConfigError):
            keys.decode_key_file("x", keys.IDENTITY_HEADER, contents)

    def test_not_hex(self):
        """64 characters that are not hex digits are refused."""
        contents = (keys.IDENTITY_HEADER + "\n" + "zz" * 32 + "\n").encode()
        with self.assertRaises(ConfigError):
            keys.decode_key_file("x", keys.IDENTITY_HEADER, contents)


class LoadOrCreateTests(SynchronousTestCase):
    """Creating, reloading and refusing key files in a real directory."""

    def setUp(self):
        self.parent = self.mktemp()
        os.mkdir(self.parent)
        self.data_dir = os.path.join(self.parent, "data")

    def test_creates_private_dir_and_files(self):
        """The data dir is created 0700 and both key files 0600."""
        keys.load_or_create_keys(self.data_dir)
        self.assertEqual(_mode(self.data_dir), 0o700)
        for name in (keys.IDENTITY_KEY_FILE, keys.SPHINX_KEY_FILE):
            self.assertEqual(_mode(os.path.join(self.data_dir, name)), 0o600)
        # No temporary file is left behind.
        self.assertEqual(
            sorted(os.listdir(self.data_dir)),
            [keys.IDENTITY_KEY_FILE, keys.SPHINX_KEY_FILE],
        )

    def test_round_trip(self):
        """A second load gives the same identity and Sphinx keys."""
        first = keys.load_or_create_keys(self.data_dir)
        second = keys.load_or_create_keys(self.data_dir)
        third = keys.load_keys(self.data_dir)
        for other in (second, third):
            self.assertEqual(other.identity.encode(), first.identity.encode())
            self.assertEqual(other.sphinx.public_bytes, first.sphinx.public_bytes)
        self.assertIsInstance(first.identity, SigningKey)
        self.assertIsInstance(first.sphinx, KeyPair)

    def test_keys_are_usable(self):
        """The identity key signs and the Sphinx public key matches its private half."""
        loaded = keys.load_or_create_keys(self.data_dir)
        signed = loaded.identity.sign(b"hello")
        self.assertEqual(loaded.identity.verify_key.verify(signed), b"hello")
        again = KeyPair.from_private_bytes(loaded.sphinx.private_bytes)
        self.assertEqual(again.public_bytes, loaded.sphinx.public_bytes)
        self.assertEqual(len(loaded.identity_public_bytes), 32)

    def test_identity_base58(self):
        """identity_base58 is the base58 text of the 32-byte public key."""
        import base58

        loaded = keys.load_or_create_keys(self.data_dir)
        self.assertEqual(
            base58.b58decode(loaded.identity_base58), loaded.identity_public_bytes
        )

    def test_distinct_providers(self):
        """Two data dirs get different keys."""
        other = os.path.join(self.parent, "other")
        one = keys.load_or_create_keys(self.data_dir)
        two = keys.load_or_create_keys(other)
        self.assertNotEqual(one.identity_public_bytes, two.identity_public_bytes)
        self.assertNotEqual(one.sphinx.public_bytes, two.sphinx.public_bytes)

    def test_missing_sphinx_key_is_created_identity_kept(self):
        """A missing Sphinx key is made anew; the existing identity is kept."""
        first = keys.load_or_create_keys(self.data_dir)
        os.unlink(os.path.join(self.data_dir, keys.SPHINX_KEY_FILE))
        second = keys.load_or_create_keys(self.data_dir)
        self.assertEqual(second.identity.encode(), first.identity.encode())
        self.assertNotEqual(second.sphinx.public_bytes, first.sphinx.public_bytes)

    def test_refuses_group_readable(self):
        """A 0644 key file is refused with ConfigError naming it, and left alone."""
        keys.load_or_create_keys(self.data_dir)
        path = os.path.join(self.data_dir, keys.IDENTITY_KEY_FILE)
        os.chmod(path, 0o644)
        with open(path, "rb") as f:
            before = f.read()
        for load in (keys.load_keys, keys.load_or_create_keys):
            with self.assertRaises(ConfigError) as caught:
                load(self.data_dir)
            self.assertIn(path, str(caught.exception))
            self.assertIn("0644", str(caught.exception))
        with open(path, "rb") as f:
            self.assertEqual(f.read(), before)
        self.assertEqual(_mode(path), 0o644)

    def test_refuses_malformed(self):
        """A malformed Sphinx key file is refused naming it and not overwritten."""
        keys.load_or_create_keys(self.data_dir)
        path = os.path.join(self.data_dir, keys.SPHINX_KEY_FILE)
        keys.write_file_atomically(path, b"not a key\n")
        with self.assertRaises(ConfigError) as caught:
            keys.load_or_create_keys(self.data_dir)
        self.assertIn(path, str(caught.exception))
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"not a key\n")

    def test_refuses_oversized(self):
        """A huge key file is refused without being read whole."""
        keys.load_or_create_keys(self.data_dir)
        path = os.path.join(self.data_dir, keys.IDENTITY_KEY_FILE)
        keys.write_file_atomically(path, b"x" * 100000)
        with self.assertRaises(ConfigError) as caught:
            keys.load_keys(self.data_dir)
        self.assertIn("too large", str(caught.exception))

    def test_refuses_directory_as_key(self):
        """A directory where a key file should be is refused."""
        os.makedirs(os.path.join(self.data_dir, keys.IDENTITY_KEY_FILE))
        with self.assertRaises(ConfigError):
            keys.load_or_create_keys(self.data_dir)

    def test_refuses_fifo_without_hanging(self):
        """A FIFO planted as a key file is refused at once, not read from."""
        keys.load_or_create_keys(self.data_dir)
        path = os.path.join(self.data_dir, keys.SPHINX_KEY_FILE)
        os.unlink(path)
        os.mkfifo(path, 0o600)
        with self.assertRaises(ConfigError) as caught:
            keys.load_or_create_keys(self.data_dir)
        self.assertIn("not a regular file", str(caught.exception))

    def test_missing_keys(self):
        """load_keys on an empty directory raises ConfigError and creates nothing."""
        os.mkdir(self.data_dir)
        with self.assertRaises(ConfigError):
            keys.load_keys(self.data_dir)
        self.assertEqual(os.listdir(self.data_dir), [])

    def test_data_dir_is_a_file(self):
        """A data dir path that is a file gives ConfigError."""
        with open(self.data_dir, "w") as f:
            f.write("x")
        with self.assertRaises(ConfigError) as caught:
            keys.load_or_create_keys(self.data_dir)
        self.assertIn(self.data_dir, str(caught.exception))


class AtomicWriteTests(SynchronousTestCase):
    """write_file_atomically."""

    def test_replaces_whole_file_with_mode(self):
        """The new contents replace the old, with the mode asked for."""
        directory = self.mktemp()
        os.mkdir(directory)
        path = os.path.join(directory, "f")
        keys.write_file_atomically(path, b"old")
        keys.write_file_atomically(path, b"new", mode=0o640)
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"new")
        # The replacement is a new file, created with the new mode.
        self.assertEqual(_mode(path) & ~0o022, 0o640 & ~0o022)
        self.assertEqual(os.listdir(directory), ["f"])

    def test_failure_leaves_no_temporary(self):
        """A failed write leaves the old file and no temporary file."""
        directory = self.mktemp()
        os.mkdir(directory)
        path = os.path.join(directory, "f")
        keys.write_file_atomically(path, b"old")
        with self.assertRaises(TypeError):
            keys.write_file_atomically(path, "not bytes")
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"old")
        self.assertEqual(os.listdir(directory), ["f"])
