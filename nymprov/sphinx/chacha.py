"""
The raw ChaCha20 keystream that Lioness XORs over its right half: the
original variant (64-bit counter, 8-byte nonce) with a zero nonce and a
counter starting at 0, as crate ``chacha`` 0.3 computes it (SPHINX.md §9.3).

Two implementations give the same bytes:

- libsodium's ``crypto_stream_chacha20_xor``. PyNaCl ships libsodium and
  exports this symbol from its shared object but wraps no raw stream
  function, so it is bound here through cffi's ABI mode (cffi comes with
  PyNaCl). It has no per-call context set-up: about 3.0 µs for the
  2,349-byte right half of a regular packet, against 5.7 µs for
  ``cryptography``, where OpenSSL's context set-up is most of the cost.
- ``cryptography``'s ChaCha20 (RFC 7539 with a zero 16-byte nonce, which
  equals the original variant for fewer than 2^32 blocks). Used when the
  libsodium symbol cannot be found, and kept as the tests' oracle.

``IMPLEMENTATION`` names the one in use; the benchmark prints it.
"""

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

_ZERO_NONCE_8 = bytes(8)
_ZERO_NONCE_16 = bytes(16)


def xor_cryptography(key: bytes, data: bytes) -> bytes:
    """:returns: ``data`` XOR the ChaCha20 keystream of ``key``."""
    return Cipher(algorithms.ChaCha20(key, _ZERO_NONCE_16), None).encryptor().update(data)


def _bind_libsodium():
    """
    :returns: a ``xor(key, data)`` function on libsodium, or ``None`` when
        PyNaCl's shared object or the symbol is missing.
    """
    try:
        import cffi
        import nacl._sodium
    except ImportError:
        return None
    ffi = cffi.FFI()
    ffi.cdef(
        "int crypto_stream_chacha20_xor(unsigned char *c, const unsigned char *m,"
        " unsigned long long mlen, const unsigned char *n, const unsigned char *k);"
    )
    try:
        stream_xor = ffi.dlopen(nacl._sodium.__file__).crypto_stream_chacha20_xor
    except (OSError, AttributeError):
        return None
    # Every output byte is written by the call, so skip cffi's zero fill.
    allocate = ffi.new_allocator(should_clear_after_alloc=False)
    as_buffer = ffi.buffer

    def xor_libsodium(key: bytes, data: bytes) -> bytes:
        """:returns: ``data`` XOR the ChaCha20 keystream of ``key``."""
        if len(key) != 32:
            raise ValueError("a ChaCha20 key is 32 bytes")
        length = len(data)
        out = allocate("unsigned char[]", length)
        stream_xor(out, data, length, _ZERO_NONCE_8, key)
        return as_buffer(out, length)[:]

    # Refuse a library that answers wrongly rather than corrupt payloads.
    probe = bytes(range(32))
    if xor_libsodium(probe, bytes(80)) != xor_cryptography(probe, bytes(80)):
        return None
    return xor_libsodium


xor_libsodium = _bind_libsodium()
if xor_libsodium is not None:
    xor = xor_libsodium
    IMPLEMENTATION = "libsodium"
else:
    xor = xor_cryptography
    IMPLEMENTATION = "cryptography"
