"""
Typed errors of descriptors and network documents.  Each ``reason`` is the
word the directory answers with (``{"error": reason}``) and the name under
which refusals are counted.
"""

from nymprov.errors import NymProvError


class DocumentError(NymProvError):
    """A descriptor or network document was refused."""

    reason = "malformed"


class MalformedDocument(DocumentError):
    """Not the JSON this format describes; the message names the field."""

    reason = "malformed"


class BadSignature(DocumentError):
    """The signature does not verify under the key that should have made it."""

    reason = "bad_signature"


class WrongDirectory(DocumentError):
    """A network document signed by a directory other than the pinned one."""

    reason = "wrong_directory"


class WrongEpoch(DocumentError):
    """A network document for an epoch other than the one asked for."""

    reason = "wrong_epoch"


# -- refusals of the directory (it answers {"error": reason}) ---------------


class StaleTimestamp(DocumentError):
    """A descriptor older than the directory accepts, or not newer than the
    one it holds for that identity (a replay)."""

    reason = "stale_timestamp"


class FutureTimestamp(DocumentError):
    """A descriptor dated further ahead than the clock skew allowed."""

    reason = "future_timestamp"


class IdentityConflict(DocumentError):
    """A descriptor claims what a live node of another identity holds: its
    mix-link address or one of its Sphinx keys."""

    reason = "identity_conflict"


class NotAdmitted(DocumentError):
    """The identity is not on the directory's admission list."""

    reason = "not_admitted"


class NoUsableKey(DocumentError):
    """A descriptor has no Sphinx key for the current or the next epoch."""

    reason = "no_usable_key"


class UnknownEpoch(DocumentError):
    """A document was asked for an epoch that the directory does not serve."""

    reason = "unknown_epoch"


class TooLarge(DocumentError):
    """A request body larger than the directory reads."""

    reason = "too_large"
