"""The client API's error codes and the typed errors of its codec."""

import enum




class ErrorCode(enum.IntEnum):
    """The codes of an ERROR response."""

    MALFORMED = 1
    UNKNOWN_TYPE = 2
    FRAME_TOO_LARGE = 3
    NOT_AUTHENTICATED = 4
    BAD_TOKEN = 5
    BAD_PROOF = 6
    INVITE_REQUIRED = 7
    RATE_LIMITED = 8
    BAD_PACKET = 9
    REPLAY = 10
    UNKNOWN_FIRST_HOP = 11
    ROUTE_REFUSED = 12
    UNKNOWN_LEASE = 13
    BUSY = 14
    INTERNAL = 15
    INVALID_ARGUMENT = 16
    REVOKED = 17


#: Errors after which the provider closes the connection.
CLOSING_ERRORS = frozenset(
    (ErrorCode.MALFORMED, ErrorCode.UNKNOWN_TYPE, ErrorCode.FRAME_TOO_LARGE, ErrorCode.REVOKED)
)


def error_reason(code):
    """
    :returns: the counter and log name of ``code``, e.g. ``"bad_token"``;
        ``"code_99"`` for a code this version does not know.
    """
    try:
        return ErrorCode(code).name.lower()
    except ValueError:
        return f"code_{code}"


class ClientApiError(Exception):
    """
    A frame that cannot be accepted, or an ERROR answer, as a typed error.

    :ivar code: an ``ErrorCode`` (or a plain int from a newer peer).
    :ivar message: a short human-readable explanation.
    :ivar request_id: the request it concerns, 0 when unknown.
    """

    def __init__(self, code, message, request_id=0):
        super().__init__(f"{error_reason(code)}: {message}")
        self.code = code
        self.message = message
        self.request_id = request_id

    @property
    def reason(self):
        """The counter name of the code."""
        return error_reason(self.code)


class _FixedCodeError(ClientApiError):
    code_value = ErrorCode.INTERNAL

    def __init__(self, message, request_id=0):
        super().__init__(self.code_value, message, request_id)


class MalformedRequest(_FixedCodeError):
    """A request frame that is too short, too long or badly formed."""

    code_value = ErrorCode.MALFORMED


class MalformedResponse(_FixedCodeError):
    """A response frame that is badly formed (seen by clients)."""

    code_value = ErrorCode.MALFORMED


class UnknownType(_FixedCodeError):
    """A frame whose type byte is not a message of this direction."""

    code_value = ErrorCode.UNKNOWN_TYPE


class FrameTooLarge(_FixedCodeError):
    """A frame longer than this direction's limit."""

    code_value = ErrorCode.FRAME_TOO_LARGE


class RemoteError(ClientApiError):
    """The provider answered a request with ERROR (seen by clients)."""
