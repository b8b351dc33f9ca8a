"""
Typed errors of the node and its stores (the packet format has its own,
in :mod:`nymprov.sphinx.errors`).

Each error carries a short ``reason``: the name under which the node counts
it and the word a log line gives for it.
"""


class NymProvError(Exception):
    """Base of nymprov's own errors outside the packet format."""

    reason = "error"


class PacketRefused(NymProvError):
    """A packet was refused by the node core; ``reason`` says why."""

    def __init__(self, reason, detail=""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class DeliveryError(NymProvError):
    """A backend did not take responsibility for a message."""

    reason = "delivery_failed"


class UnknownDestination(DeliveryError):
    """The final hop names a destination that is not a registered client."""

    reason = "unknown_destination"


class InboxFull(DeliveryError):
    """The client's inbox is at its message or byte quota."""

    reason = "inbox_full"


class MessageTooLarge(DeliveryError):
    """The message does not fit the store's fixed slot size."""

    reason = "message_too_large"


class BackendTimeout(DeliveryError):
    """The backend did not answer ``deliver`` in time."""

    reason = "backend_timeout"


class StoreError(NymProvError):
    """The store failed, or its file is of an unknown or newer schema."""

    reason = "store_error"


class ClientRevoked(NymProvError):
    """The operator revoked this client: it gets no new token until forgotten."""

    reason = "client_revoked"


class UnknownLease(NymProvError):
    """An ack names no live lease of this client."""

    reason = "unknown_lease"


class ConfigError(NymProvError):
    """A configuration value is invalid; the message names the option."""

    reason = "config_error"
