"""
Tests of nymprov.sphinx.curve: the pure RFC 7748 ladder (the oracle) and the
libsodium fast path for unclamped scalars (SPHINX.md §2, §18).
"""

import random

from twisted.trial.unittest import SynchronousTestCase

from nymprov.sphinx.curve import (
    BASE_POINT,
    L,
    DegenerateResult,
    clamp,
    clamp_invariant_scalar,
    ladder,
    scalarmult_unclamped,
    x25519,
    x25519_base,
)

h = bytes.fromhex

# RFC 7748 §5.2: two scalar/u-coordinate pairs.
RFC7748_PAIRS = [
    (
        "a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
        "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
        "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552",
    ),
    (
        # This u has bit 255 set: both paths must mask it.
        "4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d",
        "e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493",
        "95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957",
    ),
]
# RFC 7748 §5.2: k = u = 9, then k, u = X25519(k, u), k.
AFTER_1_ITERATION = "422c8e7a6227d7bca1350b3e2bb7279f7897b87bb6854b783c60e80311ae3079"
AFTER_1000_ITERATIONS = "684cf59ba83309552800ef566f2f4d3c1c3887c49360e3875f2eb94d99532c51"
# RFC 7748 §6.1.
ALICE_PRIVATE = "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"
ALICE_PUBLIC = "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
BOB_PRIVATE = "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb"
BOB_PUBLIC = "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"
SHARED = "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"


def clamped_ladder(k: bytes, u: bytes) -> bytes:
    """X25519 through the pure ladder: clamp, then multiply."""
    return ladder(int.from_bytes(clamp(k), "little"), u)


class RFC7748Tests(SynchronousTestCase):
    """RFC 7748 vectors through the pure ladder and through libsodium."""

    def test_pairs(self):
        """Both §5.2 scalar/u pairs give the RFC's output on both paths."""
        for k, u, out in RFC7748_PAIRS:
            self.assertEqual(clamped_ladder(h(k), h(u)).hex(), out)
            self.assertEqual(x25519(h(k), h(u)).hex(), out)

    def iterate(self, multiply, times):
        k = u = BASE_POINT
        for _ in range(times):
            k, u = multiply(k, u), k
        return k.hex()

    def test_one_iteration(self):
        """One iteration of the §5.2 loop gives the RFC's result on both paths."""
        self.assertEqual(self.iterate(clamped_ladder, 1), AFTER_1_ITERATION)
        self.assertEqual(self.iterate(x25519, 1), AFTER_1_ITERATION)

    def test_thousand_iterations(self):
        """1,000 iterations of the §5.2 loop give the RFC's result on both paths."""
        self.assertEqual(self.iterate(x25519, 1000), AFTER_1000_ITERATIONS)
        self.assertEqual(self.iterate(clamped_ladder, 1000), AFTER_1000_ITERATIONS)

    def test_diffie_hellman(self):
        """The §6.1 key pairs and their shared secret, on both paths."""
        alice, bob = h(ALICE_PRIVATE), h(BOB_PRIVATE)
        self.assertEqual(x25519_base(alice).hex(), ALICE_PUBLIC)
        self.assertEqual(x25519_base(bob).hex(), BOB_PUBLIC)
        self.assertEqual(clamped_ladder(alice, BASE_POINT).hex(), ALICE_PUBLIC)
        self.assertEqual(clamped_ladder(bob, BASE_POINT).hex(), BOB_PUBLIC)
        for private, public in ((alice, BOB_PUBLIC), (bob, ALICE_PUBLIC)):
            self.assertEqual(x25519(private, h(public)).hex(), SHARED)
            self.assertEqual(clamped_ladder(private, h(public)).hex(), SHARED)


class FastPathTests(SynchronousTestCase):
    """The clamp-invariant scalar trick against the pure ladder."""

    def test_random_honest_points(self):
        """
        On 1,000 random points of the prime-order subgroup and random scalars
        mod l, the fast path equals the unclamped ladder.
        """
        rng = random.Random(7748)
        for _ in range(1000):
            point = x25519_base(rng.randbytes(32))
            k = rng.randrange(1, L)
            self.assertEqual(scalarmult_unclamped(k, point), ladder(k, point))

    def test_equivalent_scalar_is_clamp_invariant(self):
        """
        The equivalent scalar survives clamping and is k or -k mod l.
        """
        rng = random.Random(18)
        for _ in range(200):
            k = rng.randrange(1, L)
            equivalent = clamp_invariant_scalar(k)
            self.assertEqual(clamp(equivalent), equivalent)
            self.assertIn(int.from_bytes(equivalent, "little") % L, (k, L - k))

    def test_fallback(self):
        """
        Scalars whose j and l - j both miss [2^251, 2^252) (j = 2^252, and a
        small j such as 1) have no equivalent scalar, and the fallback
        through the ladder still gives the right point.
        """
        point = x25519_base(bytes(range(32)))
        for j in (1 << 252, 1, 12345):
            k = 8 * j % L
            self.assertIsNone(clamp_invariant_scalar(k))
            self.assertEqual(scalarmult_unclamped(k, point), ladder(k, point))

    def test_zero_scalar(self):
        """
        A scalar of 0 mod l gives the all-zero point; the fast path reports
        it as degenerate instead of returning it.
        """
        point = x25519_base(bytes(range(32)))
        self.assertEqual(ladder(L, point), bytes(32))
        self.assertRaises(DegenerateResult, scalarmult_unclamped, L, point)

    def test_low_order_point(self):
        """libsodium's all-zero result is reported as degenerate."""
        self.assertRaises(DegenerateResult, x25519, clamp(bytes(range(32))), bytes(32))
        self.assertRaises(DegenerateResult, scalarmult_unclamped, 12345, bytes(32))

    def test_ladder_masks_bit_255(self):
        """The ladder ignores bit 255 of u, as dalek does."""
        point = bytearray(x25519_base(bytes(range(32))))
        k = 0xDEADBEEF
        plain = ladder(k, bytes(point))
        point[31] |= 0x80
        self.assertEqual(ladder(k, bytes(point)), plain)
