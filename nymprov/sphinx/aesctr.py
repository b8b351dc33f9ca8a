"""
AES-128-CTR from a zero IV: the header's stream cipher (SPHINX.md §5).

Two implementations give the same bytes:

- OpenSSL's libcrypto, bound through cffi's ABI mode, keeping one cipher
  context per thread and only re-keying it per call. ``cryptography`` sets
  up a fresh OpenSSL context (and looks the cipher up again) for every
  ``encryptor()``; for the 376 bytes a hop decrypts that set-up is most of
  the cost, and re-keying a kept context measured about 2.5 times faster.
  ``cryptography`` offers no way to re-key a context, so this is bound by
  hand; it is the libcrypto that Python's own ``hashlib`` links.
- ``cryptography``'s AES-CTR, used when no libcrypto can be bound, and kept
  as the tests' oracle.

``IMPLEMENTATION`` names the one in use; the benchmark prints it.
"""

import threading

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

_ZERO_IV = bytes(16)


def encrypt_cryptography(key: bytes, data: bytes) -> bytes:
    """:returns: ``data`` XOR the AES-128-CTR keystream of ``key``."""
    return Cipher(algorithms.AES(key), modes.CTR(_ZERO_IV)).encryptor().update(data)


_DECLARATIONS = """
typedef struct evp_cipher_ctx_st EVP_CIPHER_CTX;
typedef struct evp_cipher_st EVP_CIPHER;
typedef struct engine_st ENGINE;
EVP_CIPHER_CTX *EVP_CIPHER_CTX_new(void);
void EVP_CIPHER_CTX_free(EVP_CIPHER_CTX *ctx);
const EVP_CIPHER *EVP_aes_128_ctr(void);
int EVP_EncryptInit_ex(EVP_CIPHER_CTX *ctx, const EVP_CIPHER *type, ENGINE *impl,
                       const unsigned char *key, const unsigned char *iv);
int EVP_EncryptUpdate(EVP_CIPHER_CTX *ctx, unsigned char *out, int *outl,
                      const unsigned char *in, int inl);
"""


def _libcrypto_path():
    """:returns: the file of the libcrypto that ``hashlib`` uses, or ``None``."""
    import ctypes.util

    try:
        import _hashlib
    except ImportError:
        return ctypes.util.find_library("crypto")
    # dlsym on _hashlib's handle also searches the libcrypto it links.
    return getattr(_hashlib, "__file__", None) or ctypes.util.find_library("crypto")


def _bind_libcrypto():
    """
    :returns: an ``encrypt(key, data)`` function on libcrypto, or ``None``
        when no libcrypto with these functions can be loaded.
    """
    try:
        import cffi
    except ImportError:
        return None
    path = _libcrypto_path()
    if path is None:
        return None
    ffi = cffi.FFI()
    ffi.cdef(_DECLARATIONS)
    try:
        lib = ffi.dlopen(path)
        new_context, free_context = lib.EVP_CIPHER_CTX_new, lib.EVP_CIPHER_CTX_free
        cipher = lib.EVP_aes_128_ctr()
        init, update = lib.EVP_EncryptInit_ex, lib.EVP_EncryptUpdate
    except (OSError, AttributeError):
        return None
    null = ffi.NULL
    # Every output byte is written by the call, so skip cffi's zero fill.
    allocate = ffi.new_allocator(should_clear_after_alloc=False)
    as_buffer = ffi.buffer
    per_thread = threading.local()

    def thread_context():
        # A context is not safe to share between threads; each thread keeps
        # one, freed with the thread's locals.
        context = ffi.gc(new_context(), free_context)
        if context == null or init(context, cipher, null, null, null) != 1:
            raise RuntimeError("libcrypto could not set up AES-128-CTR")
        per_thread.context = context
        per_thread.written = ffi.new("int *")
        return context

    def encrypt_libcrypto(key: bytes, data: bytes) -> bytes:
        """:returns: ``data`` XOR the AES-128-CTR keystream of ``key``."""
        if len(key) != 16:
            raise ValueError("an AES-128 key is 16 bytes")
        context = getattr(per_thread, "context", None) or thread_context()
        length = len(data)
        out = allocate("unsigned char[]", length)
        if init(context, null, null, key, _ZERO_IV) != 1 or update(context, out, per_thread.written, data, length) != 1:
            raise RuntimeError("libcrypto AES-128-CTR failed")
        return as_buffer(out, length)[:]

    try:
        # Refuse a library that answers wrongly rather than corrupt packets.
        if encrypt_libcrypto(bytes(16), bytes(16)) != encrypt_cryptography(bytes(16), bytes(16)):
            return None
    except RuntimeError:
        return None
    return encrypt_libcrypto


encrypt_libcrypto = _bind_libcrypto()
if encrypt_libcrypto is not None:
    encrypt = encrypt_libcrypto
    IMPLEMENTATION = "libcrypto"
else:
    encrypt = encrypt_cryptography
    IMPLEMENTATION = "cryptography"
