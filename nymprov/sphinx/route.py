"""
The sender's description of a route: its nodes and its final destination.
"""

from dataclasses import dataclass

from nymprov.sphinx.params import (
    DESTINATION_ADDRESS_LENGTH,
    IDENTIFIER_LENGTH,
    NODE_ADDRESS_LENGTH,
)

_PUBLIC_KEY_LENGTH = 32


def _require(value, length, what):
    if not isinstance(value, bytes) or len(value) != length:
        raise ValueError(f"{what} must be {length} bytes")


@dataclass(frozen=True)
class Node:
    """A hop: its 32-byte node address and its 32-byte X25519 public key."""

    address: bytes
    public_key: bytes

    def __post_init__(self):
        _require(self.address, NODE_ADDRESS_LENGTH, "a node address")
        _require(self.public_key, _PUBLIC_KEY_LENGTH, "a public key")


@dataclass(frozen=True)
class Destination:
    """Where the final hop delivers: a 32-byte address and a 16-byte SURB id."""

    address: bytes
    surb_id: bytes

    def __post_init__(self):
        _require(self.address, DESTINATION_ADDRESS_LENGTH, "a destination address")
        _require(self.surb_id, IDENTIFIER_LENGTH, "a SURB identifier")
