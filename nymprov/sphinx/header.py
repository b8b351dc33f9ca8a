"""
Building a Sphinx header for a route (SPHINX.md §4.1, §7, §8).

Written by hand: the Sphinx header construction is what no library offers.
"""

import os
from dataclasses import dataclass

from nymprov.sphinx.curve import (
    L,
    DegenerateResult,
    clamp,
    scalarmult_unclamped,
    x25519,
    x25519_base,
)
from nymprov.sphinx.errors import InvalidRouting
from nymprov.sphinx.params import (
    BETA_SIZE,
    FINAL_HOP_FLAG,
    FORWARD_HOP_FLAG,
    HOP_BLOCK_SIZE,
    MAX_DELAY_NS,
    MAX_PATH_LENGTH,
    VERSION_BYTES,
)
from nymprov.sphinx.primitives import (
    STREAM_LENGTH,
    RoutingKeys,
    derive_routing_keys,
    header_mac,
    pseudorandom_bytes,
    stream_encrypt,
    xor_bytes,
)

# What the final hop's plaintext holds before its random padding:
# flag, version, destination address, SURB identifier.
_FINAL_ROUTING_PREFIX = 1 + 3 + 32 + 16


def final_padding_length(route_length: int) -> int:
    """:returns: how many random bytes pad the final hop's routing info."""
    return BETA_SIZE - HOP_BLOCK_SIZE * (route_length - 1) - _FINAL_ROUTING_PREFIX


@dataclass(frozen=True)
class KeyMaterial:
    """The sender's secrets for one header: alpha_0 and each hop's keys."""

    alpha0: bytes
    routing_keys: list


def derive_key_material(initial_secret: bytes, public_keys) -> KeyMaterial:
    """
    The sender's side of the key exchange with every hop (SPHINX.md §4.1).

    :param initial_secret: 32 bytes, clamped here.
    :raises InvalidRouting: if a public key is a low-order point.
    """
    x = clamp(initial_secret)
    accumulated = int.from_bytes(x, "little")
    keys = []
    try:
        for hop, public_key in enumerate(public_keys):
            if hop == 0:
                # The unreduced clamped secret: plain X25519.
                shared = x25519(x, public_key)
            else:
                shared = scalarmult_unclamped(accumulated, public_key)
            hop_keys = derive_routing_keys(shared)
            keys.append(hop_keys)
            blinding = int.from_bytes(hop_keys.blinding_factor, "little") % L
            accumulated = accumulated * blinding % L
    except DegenerateResult:
        raise InvalidRouting("a route node's public key is a low-order point") from None
    return KeyMaterial(x25519_base(x), keys)


def _filler(keys) -> bytes:
    filler = b""
    for i, hop_keys in enumerate(keys, start=1):
        stream = pseudorandom_bytes(hop_keys.stream_cipher_key)
        filler = xor_bytes(filler + bytes(HOP_BLOCK_SIZE), stream[STREAM_LENGTH - HOP_BLOCK_SIZE * i :])
    return filler


def check_route(route, delays_ns) -> None:
    """
    :raises ValueError: for an empty or too long route, a delay count that
        differs from the hop count, or a delay outside the u64 range.
    """
    if not 1 <= len(route) <= MAX_PATH_LENGTH:
        raise ValueError(f"a route has 1 to {MAX_PATH_LENGTH} nodes")
    if len(delays_ns) != len(route):
        raise ValueError("one delay per node is needed")
    for delay in delays_ns:
        if not isinstance(delay, int) or not 0 <= delay <= MAX_DELAY_NS:
            raise ValueError("delays are integer nanoseconds in the u64 range")


def create_header(initial_secret, route, delays_ns, destination, final_padding=None):
    """
    Build the 348-byte header for ``route`` (SPHINX.md §8).

    :param initial_secret: 32 bytes (clamped here), or ``None`` for random.
    :param route: a list of :class:`~nymprov.sphinx.route.Node`.
    :param delays_ns: one delay per node; the last is never written.
    :param destination: a :class:`~nymprov.sphinx.route.Destination`.
    :param final_padding: the final hop's padding, or ``None`` for random
        (the crate always draws it at random; tests inject it).
    :returns: ``(header, payload_keys)``, the keys in route order.
    :raises ValueError: for a malformed route, delays or padding.
    :raises InvalidRouting: if a node's public key is a low-order point.
    """
    check_route(route, delays_ns)
    if initial_secret is None:
        initial_secret = os.urandom(32)
    elif not isinstance(initial_secret, bytes) or len(initial_secret) != 32:
        raise ValueError("the initial secret is 32 bytes")
    n = len(route)
    padding_length = final_padding_length(n)
    if final_padding is None:
        # Random, not zeros: the crate's countermeasure against Kuhn et al.
        final_padding = os.urandom(padding_length)
    elif len(final_padding) != padding_length:
        raise ValueError(f"the final padding of a {n}-hop route is {padding_length} bytes")

    material = derive_key_material(initial_secret, [node.public_key for node in route])
    keys = material.routing_keys
    final_plain = (
        bytes((FINAL_HOP_FLAG,)) + VERSION_BYTES + destination.address + destination.surb_id + final_padding
    )
    beta = stream_encrypt(keys[-1].stream_cipher_key, final_plain) + _filler(keys[:-1])
    gamma = header_mac(keys[-1].header_integrity_hmac_key, beta)
    for i in range(n - 2, -1, -1):
        plain = (
            bytes((FORWARD_HOP_FLAG,))
            + VERSION_BYTES
            + route[i + 1].address
            + delays_ns[i].to_bytes(8, "big")
            + gamma
            + beta[: BETA_SIZE - HOP_BLOCK_SIZE]
        )
        beta = stream_encrypt(keys[i].stream_cipher_key, plain)
        gamma = header_mac(keys[i].header_integrity_hmac_key, beta)
    return material.alpha0 + gamma + beta, [k.payload_key for k in keys]


__all__ = [
    "KeyMaterial",
    "RoutingKeys",
    "check_route",
    "create_header",
    "derive_key_material",
    "final_padding_length",
]
