"""
Curve25519 arithmetic as the crate does it: an unclamped Montgomery ladder
(the oracle) and its fast libsodium equivalent (SPHINX.md §2 and §18).
"""

from nacl.bindings import crypto_scalarmult, crypto_scalarmult_base
from nacl.exceptions import CryptoError

# Field prime and the order of the prime-order subgroup.
P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493
_A24 = 121665
_U_MASK = (1 << 255) - 1
_INVERSE_OF_8 = pow(8, -1, L)
# X25519 clamping leaves a scalar k' unchanged exactly when k' is a multiple
# of 8 in [2^254, 2^255), i.e. k' = 8j with j in [2^251, 2^252).
_J_LOW = 1 << 251
_J_HIGH = 1 << 252

BASE_POINT = (9).to_bytes(32, "little")


class DegenerateResult(Exception):
    """
    A multiplication gave the all-zero point (a low-order input). Internal:
    callers translate it into the typed error that fits their side.
    """


def clamp(private: bytes) -> bytes:
    """
    :returns: ``private`` with X25519 clamping applied (SPHINX.md §2.1).
    """
    clamped = bytearray(private)
    clamped[0] &= 248
    clamped[31] &= 127
    clamped[31] |= 64
    return bytes(clamped)


def ladder(k: int, u: bytes) -> bytes:
    """
    curve25519-dalek's ``MontgomeryPoint * Scalar``: the RFC 7748 ladder over
    bits 254..0 of ``k`` with no clamping, bit 255 of ``u`` masked, and an
    all-zero result allowed. Slow (about 1 ms) and kept as the test oracle
    and the rare fallback; written by hand because no library offers an
    unclamped Montgomery ladder.
    """
    x1 = int.from_bytes(u, "little") & _U_MASK
    x2, z2, x3, z3 = 1, 0, x1, 1
    swap = 0
    for t in range(254, -1, -1):
        bit = (k >> t) & 1
        if swap ^ bit:
            x2, x3, z2, z3 = x3, x2, z3, z2
        swap = bit
        a, b = (x2 + z2) % P, (x2 - z2) % P
        aa, bb = a * a % P, b * b % P
        e = (aa - bb) % P
        c, d = (x3 + z3) % P, (x3 - z3) % P
        da, cb = d * a % P, c * b % P
        x3, z3 = (da + cb) ** 2 % P, x1 * (da - cb) ** 2 % P
        x2, z2 = aa * bb % P, e * (aa + _A24 * e) % P
    if swap:
        x2, z2 = x3, z3
    # pow(0, P - 2, P) is 0, so a zero denominator yields the zero point,
    # as dalek's inversion does.
    return (x2 * pow(z2, P - 2, P) % P).to_bytes(32, "little")


def x25519(private: bytes, u: bytes) -> bytes:
    """
    Plain X25519 (libsodium) of a clamped 32-byte scalar.

    :raises DegenerateResult: if the result is all zeros.
    """
    try:
        return crypto_scalarmult(private, u)
    except CryptoError:
        raise DegenerateResult() from None


def x25519_base(private: bytes) -> bytes:
    """:returns: the X25519 public key of the 32-byte scalar ``private``."""
    return crypto_scalarmult_base(private)


def clamp_invariant_scalar(k: int):
    """
    Find a scalar that X25519 leaves alone when clamping and that gives the
    same u-coordinate as ``k`` on the prime-order subgroup (SPHINX.md §18).

    :returns: 32 bytes, or ``None`` when neither ``k`` nor ``-k`` has one
        (probability about 2^-124 for a random ``k``).
    """
    j = k * _INVERSE_OF_8 % L
    if _J_LOW <= j < _J_HIGH:
        return (j << 3).to_bytes(32, "little")
    # u([k]P) == u([-k]P), so the negation serves as well.
    j = L - j
    if _J_LOW <= j < _J_HIGH:
        return (j << 3).to_bytes(32, "little")
    return None


def scalarmult_unclamped(k: int, u: bytes) -> bytes:
    """
    ``ladder(k, u)`` for ``u`` in the prime-order subgroup, through
    libsodium: about 30 times faster than the pure ladder.

    :raises DegenerateResult: if the result is all zeros.
    """
    equivalent = clamp_invariant_scalar(k)
    if equivalent is None:
        result = ladder(k % L, u)
        if result == bytes(32):
            raise DegenerateResult()
        return result
    return x25519(equivalent, u)
