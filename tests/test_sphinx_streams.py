"""
The fast stream-cipher paths (libsodium ChaCha20, libcrypto AES-128-CTR)
against ``cryptography``, their oracle.
"""

import threading

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from nymprov.sphinx import aesctr, chacha


def _require(implementation, name):
    if implementation is None:
        raise SkipTest(f"{name} is not available here")


class ChaChaTests(SynchronousTestCase):
    """libsodium's raw ChaCha20 equals ``cryptography``'s."""

    @settings(max_examples=200)
    @given(key=st.binary(min_size=32, max_size=32), data=st.binary(max_size=3000))
    def test_same_stream(self, key, data):
        """Any key and any length from 0 to 3,000 bytes give the same bytes."""
        _require(chacha.xor_libsodium, "libsodium")
        self.assertEqual(chacha.xor_libsodium(key, data), chacha.xor_cryptography(key, data))

    def test_long_stream(self):
        """Past many 64-byte blocks the counters still agree."""
        _require(chacha.xor_libsodium, "libsodium")
        key, data = bytes(range(32)), bytes(64 * 1000 + 7)
        self.assertEqual(chacha.xor_libsodium(key, data), chacha.xor_cryptography(key, data))

    def test_wrong_key_size(self):
        """A key that is not 32 bytes is refused, not read past its end."""
        _require(chacha.xor_libsodium, "libsodium")
        self.assertRaises(ValueError, chacha.xor_libsodium, bytes(16), b"data")


class AESCTRTests(SynchronousTestCase):
    """libcrypto's AES-128-CTR on a kept context equals ``cryptography``'s."""

    @settings(max_examples=200)
    @given(key=st.binary(min_size=16, max_size=16), data=st.binary(max_size=3000))
    def test_same_stream(self, key, data):
        """Any key and any length give the same bytes."""
        _require(aesctr.encrypt_libcrypto, "libcrypto")
        self.assertEqual(aesctr.encrypt_libcrypto(key, data), aesctr.encrypt_cryptography(key, data))

    def test_rekeying_restarts_the_counter(self):
        """
        A call right after a long one, under another key, starts again from
        the zero IV: no counter state leaks from call to call.
        """
        _require(aesctr.encrypt_libcrypto, "libcrypto")
        aesctr.encrypt_libcrypto(bytes(16), bytes(1001))
        key = bytes(range(16))
        self.assertEqual(aesctr.encrypt_libcrypto(key, bytes(50)), aesctr.encrypt_cryptography(key, bytes(50)))
        self.assertEqual(aesctr.encrypt_libcrypto(key, bytes(50)), aesctr.encrypt_cryptography(key, bytes(50)))

    def test_threads(self):
        """
        Threads each get their own context: many calls from four threads at
        once all give the right bytes.
        """
        _require(aesctr.encrypt_libcrypto, "libcrypto")
        wrong = []

        def work(seed):
            for i in range(300):
                key = bytes([seed, i % 256]) * 8
                data = bytes([i % 256]) * (seed * 100 + i)
                if aesctr.encrypt_libcrypto(key, data) != aesctr.encrypt_cryptography(key, data):
                    wrong.append((seed, i))

        threads = [threading.Thread(target=work, args=(seed,)) for seed in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        self.assertEqual(wrong, [])
        self.assertFalse(any(thread.is_alive() for thread in threads))

    def test_wrong_key_size(self):
        """A key that is not 16 bytes is refused."""
        _require(aesctr.encrypt_libcrypto, "libcrypto")
        self.assertRaises(ValueError, aesctr.encrypt_libcrypto, bytes(32), b"data")
