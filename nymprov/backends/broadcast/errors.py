"""Why a payload is not a transaction the broadcaster takes: typed, counted by reason."""

from nymprov.errors import DeliveryError


class InvalidTransaction(DeliveryError):
    """The payload is not one transaction of the configured chain."""

    reason = "tx_invalid"


class MalformedTransaction(InvalidTransaction):
    """The bytes do not parse as exactly one transaction."""

    reason = "tx_malformed"


class TransactionTooLarge(InvalidTransaction):
    """The payload is longer than the configured limit."""

    reason = "tx_too_large"


class UnsupportedTransaction(InvalidTransaction):
    """Well-formed, but of a kind that is not broadcast (a type, a coinbase)."""

    reason = "tx_unsupported"
