"""
Typed errors of the Sphinx packet format (SPHINX.md §13 and §18).

Every class carries a short ``reason``: the node counts refused packets by
``exc.reason`` and a log line names it, so reasons are stable identifiers.
"""


class SphinxError(Exception):
    """Base of every error the packet format raises for malformed bytes."""

    reason = "sphinx_error"


class InvalidPacket(SphinxError):
    """The bytes cannot be a packet at all (too short)."""

    reason = "invalid_packet"


class InvalidHeader(SphinxError):
    """The header is malformed or fails its integrity check."""

    reason = "invalid_header"


class BadMAC(InvalidHeader):
    """The header's integrity MAC (gamma) does not verify."""

    reason = "bad_mac"


class DegenerateAlpha(InvalidHeader):
    """
    The alpha is a low-order point: the shared secret is all zeros, so
    anyone could forge the MAC (SPHINX.md §18).
    """

    reason = "degenerate_alpha"


class NonCanonicalAlpha(InvalidHeader):
    """
    The alpha has bit 255 set or is p or more: a second encoding of a point
    that an honest sender never writes (SPHINX.md §18).
    """

    reason = "non_canonical_alpha"


class InvalidPayload(SphinxError):
    """The payload is too short, too long for its message, or badly padded."""

    reason = "invalid_payload"


class InvalidSURB(SphinxError):
    """A single-use reply block cannot be built or parsed."""

    reason = "invalid_surb"


class InvalidRouting(SphinxError):
    """The decrypted routing information is not understood."""

    reason = "invalid_routing"


class InvalidAddress(InvalidRouting):
    """A node address is not a well-formed encoded socket address."""

    reason = "invalid_address"


class ReplayedPacket(SphinxError):
    """
    The packet's replay tag was seen before. The packet format cannot detect
    this on its own; the node raises it after asking its replay cache.
    """

    reason = "replay"
