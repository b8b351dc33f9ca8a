"""
The client-API message codec: requests and responses between a client and
its provider, byte for byte as ``doc/protocol.md`` describes them.

Every frame is ``length u32 BE || type u8 || request_id u32 BE || body``;
``length`` counts the bytes after itself.  Pure bytes in, bytes out; no
Twisted.
"""

import enum
import os
import struct
from dataclasses import dataclass, field

from nymprov.sphinx.params import PacketSize

#: Largest client-to-provider frame after the length prefix.  A SEND of the
#: biggest packet needs 5 + 32 + 33,133 bytes; the rest is headroom.
MAX_REQUEST_FRAME = 65536
#: Largest provider-to-client frame after the length prefix.
MAX_RESPONSE_FRAME = 16 * 1024 * 1024
MAX_ERROR_MESSAGE = 512
MAX_INVITE = 255
ADDRESS_LENGTH = 32
TOKEN_LENGTH = 32
NONCE_LENGTH = 32
SIGNATURE_LENGTH = 64

#: Domain separation for the registration proof, so that the signature can
#: never be mistaken for one made for any other purpose.
REGISTER_CONTEXT = b"nymprov-register-v1\x00"

PULL_FLAG_PAD = 0x01
SLOT_DUMMY = 0
SLOT_MESSAGE = 1
SLOT_HEADER_LENGTH = 5

_FRAME_HEAD = struct.Struct(">IBI")
_BODY_HEAD = struct.Struct(">BI")
_PACKET_LENGTHS = frozenset(size.packet_size for size in PacketSize)


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


#: Errors after which the provider closes the connection.
CLOSING_ERRORS = frozenset(
    (ErrorCode.MALFORMED, ErrorCode.UNKNOWN_TYPE, ErrorCode.FRAME_TOO_LARGE)
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


# Field checks shared by the message classes: a message that cannot be
# encoded is refused when it is built, so encode() never writes bad bytes.


def _check_bytes(name, value, length):
    if not isinstance(value, bytes) or len(value) != length:
        raise ValueError(f"{name} must be {length} bytes")


def _check_uint(name, value, bits):
    if not isinstance(value, int) or not 0 <= value < (1 << bits):
        raise ValueError(f"{name} must be an unsigned {bits}-bit int")


def _request_id_field():
    return field(default=0, kw_only=True)


class _Message:
    """Shared behaviour; subclasses set TYPE and NAME."""

    TYPE = None
    NAME = None

    def _validate(self):
        _check_uint("request_id", self.request_id, 32)

    def __post_init__(self):
        self._validate()

    def _encode_body(self, fill):
        return b""

    @classmethod
    def _decode_body(cls, body, request_id):
        if body:
            raise ValueError(f"{cls.NAME} has no body")
        return cls(request_id=request_id)


# Requests (client to provider).


@dataclass(frozen=True)
class Challenge(_Message):
    """Ask for a fresh registration nonce."""

    TYPE, NAME = 0x01, "challenge"
    request_id: int = _request_id_field()


@dataclass(frozen=True)
class Register(_Message):
    """Register ``address`` (or rotate its token) with a signed proof."""

    TYPE, NAME = 0x02, "register"
    address: bytes
    signature: bytes
    invite: bytes = b""
    request_id: int = _request_id_field()

    def _validate(self):
        super()._validate()
        _check_bytes("address", self.address, ADDRESS_LENGTH)
        _check_bytes("signature", self.signature, SIGNATURE_LENGTH)
        if not isinstance(self.invite, bytes) or len(self.invite) > MAX_INVITE:
            raise ValueError(f"invite must be at most {MAX_INVITE} bytes")

    def _encode_body(self, fill):
        return self.address + self.signature + bytes((len(self.invite),)) + self.invite

    @classmethod
    def _decode_body(cls, body, request_id):
        fixed = ADDRESS_LENGTH + SIGNATURE_LENGTH
        if len(body) < fixed + 1 or len(body) != fixed + 1 + body[fixed]:
            raise ValueError("register body has the wrong length")
        return cls(
            body[:ADDRESS_LENGTH],
            body[ADDRESS_LENGTH:fixed],
            body[fixed + 1 :],
            request_id=request_id,
        )


@dataclass(frozen=True)
class Auth(_Message):
    """Authenticate the connection as ``address`` with its token."""

    TYPE, NAME = 0x03, "auth"
    address: bytes
    token: bytes
    request_id: int = _request_id_field()

    def _validate(self):
        super()._validate()
        _check_bytes("address", self.address, ADDRESS_LENGTH)
        _check_bytes("token", self.token, TOKEN_LENGTH)

    def _encode_body(self, fill):
        return self.address + self.token

    @classmethod
    def _decode_body(cls, body, request_id):
        if len(body) != ADDRESS_LENGTH + TOKEN_LENGTH:
            raise ValueError("auth body has the wrong length")
        return cls(body[:ADDRESS_LENGTH], body[ADDRESS_LENGTH:], request_id=request_id)


@dataclass(frozen=True)
class Send(_Message):
    """Hand one Sphinx packet to the provider for ``first_hop``."""

    TYPE, NAME = 0x04, "send"
    first_hop: bytes
    packet: bytes
    request_id: int = _request_id_field()

    def _validate(self):
        super()._validate()
        _check_bytes("first_hop", self.first_hop, ADDRESS_LENGTH)
        if not isinstance(self.packet, bytes) or len(self.packet) not in _PACKET_LENGTHS:
            raise ValueError("packet must be of one of the Sphinx packet sizes")

    def _encode_body(self, fill):
        return self.first_hop + self.packet

    @classmethod
    def _decode_body(cls, body, request_id):
        return cls(body[:ADDRESS_LENGTH], body[ADDRESS_LENGTH:], request_id=request_id)


_PULL = struct.Struct(">HB")


@dataclass(frozen=True)
class Pull(_Message):
    """Lease up to ``max_count`` messages; ``pad`` asks for dummy slots."""

    TYPE, NAME = 0x05, "pull"
    max_count: int
    pad: bool = False
    request_id: int = _request_id_field()

    def _validate(self):
        super()._validate()
        _check_uint("max_count", self.max_count, 16)
        if not isinstance(self.pad, bool):
            raise ValueError("pad must be a bool")

    def _encode_body(self, fill):
        return _PULL.pack(self.max_count, PULL_FLAG_PAD if self.pad else 0)

    @classmethod
    def _decode_body(cls, body, request_id):
        max_count, flags = _PULL.unpack(body)
        # Unknown flag bits are refused rather than ignored, so that a later
        # flag can never be silently dropped by an older provider.
        if flags & ~PULL_FLAG_PAD:
            raise ValueError("unknown pull flags")
        return cls(max_count, bool(flags & PULL_FLAG_PAD), request_id=request_id)


_U64 = struct.Struct(">Q")
_U32 = struct.Struct(">I")


@dataclass(frozen=True)
class Ack(_Message):
    """Delete the messages of lease ``lease_id``."""

    TYPE, NAME = 0x06, "ack"
    lease_id: int
    request_id: int = _request_id_field()

    def _validate(self):
        super()._validate()
        _check_uint("lease_id", self.lease_id, 64)

    def _encode_body(self, fill):
        return _U64.pack(self.lease_id)

    @classmethod
    def _decode_body(cls, body, request_id):
        (lease_id,) = _U64.unpack(body)
        return cls(lease_id, request_id=request_id)


@dataclass(frozen=True)
class Forget(_Message):
    """Delete this client, its token and its inbox."""

    TYPE, NAME = 0x07, "forget"
    request_id: int = _request_id_field()


@dataclass(frozen=True)
class Ping(_Message):
    """Ask for a PONG (keep-alive, round-trip time)."""

    TYPE, NAME = 0x08, "ping"
    request_id: int = _request_id_field()


# Responses (provider to client).


@dataclass(frozen=True)
class ChallengeOk(_Message):
    """The provider's identity key and a single-use nonce."""

    TYPE, NAME = 0x81, "challenge_ok"
    provider_identity: bytes
    nonce: bytes
    request_id: int = _request_id_field()

    def _validate(self):
        super()._validate()
        _check_bytes("provider_identity", self.provider_identity, ADDRESS_LENGTH)
        _check_bytes("nonce", self.nonce, NONCE_LENGTH)

    def _encode_body(self, fill):
        return self.provider_identity + self.nonce

    @classmethod
    def _decode_body(cls, body, request_id):
        if len(body) != ADDRESS_LENGTH + NONCE_LENGTH:
            raise ValueError("challenge_ok body has the wrong length")
        return cls(body[:ADDRESS_LENGTH], body[ADDRESS_LENGTH:], request_id=request_id)


@dataclass(frozen=True)
class Registered(_Message):
    """The new access token; the old one, if any, no longer works."""

    TYPE, NAME = 0x82, "registered"
    token: bytes
    request_id: int = _request_id_field()

    def _validate(self):
        super()._validate()
        _check_bytes("token", self.token, TOKEN_LENGTH)

    def _encode_body(self, fill):
        return self.token

    @classmethod
    def _decode_body(cls, body, request_id):
        return cls(body, request_id=request_id)


@dataclass(frozen=True)
class AuthOk(_Message):
    """The connection is authenticated."""

    TYPE, NAME = 0x83, "auth_ok"
    request_id: int = _request_id_field()


@dataclass(frozen=True)
class Sent(_Message):
    """The packet was accepted for its first hop."""

    TYPE, NAME = 0x84, "sent"
    request_id: int = _request_id_field()


@dataclass(frozen=True)
class Slot:
    """One slot of a MESSAGES response: a real message or a dummy."""

    kind: int
    data: bytes

    @classmethod
    def message(cls, data):
        """A slot carrying the message ``data``."""
        return cls(SLOT_MESSAGE, data)

    @classmethod
    def dummy(cls):
        """An empty dummy slot, padding the response."""
        return cls(SLOT_DUMMY, b"")


_MESSAGES_HEAD = struct.Struct(">QIH")
_SLOT_HEAD = struct.Struct(">BI")


@dataclass(frozen=True)
class Messages(_Message):
    """A leased batch, every slot ``5 + slot_size`` bytes on the wire."""

    TYPE, NAME = 0x85, "messages"
    lease_id: int
    slot_size: int
    slots: tuple = ()
    request_id: int = _request_id_field()

    def _validate(self):
        super()._validate()
        _check_uint("lease_id", self.lease_id, 64)
        _check_uint("slot_size", self.slot_size, 32)
        if not isinstance(self.slots, tuple) or len(self.slots) > 0xFFFF:
            raise ValueError("slots must be a tuple of at most 65535 slots")
        for slot in self.slots:
            if slot.kind not in (SLOT_DUMMY, SLOT_MESSAGE):
                raise ValueError("unknown slot kind")
            if not isinstance(slot.data, bytes) or len(slot.data) > self.slot_size:
                raise ValueError("slot data longer than slot_size")

    @property
    def messages(self):
        """The real messages, in order, without the dummies."""
        return tuple(s.data for s in self.slots if s.kind == SLOT_MESSAGE)

    def _encode_body(self, fill):
        parts = [_MESSAGES_HEAD.pack(self.lease_id, self.slot_size, len(self.slots))]
        for slot in self.slots:
            parts.append(_SLOT_HEAD.pack(slot.kind, len(slot.data)))
            parts.append(slot.data)
            # Random rather than zero fill, so that nothing about a slot's
            # content length survives even a compressing transport.
            parts.append(fill(self.slot_size - len(slot.data)))
        return b"".join(parts)

    @classmethod
    def _decode_body(cls, body, request_id):
        lease_id, slot_size, count = _MESSAGES_HEAD.unpack_from(body)
        stride = SLOT_HEADER_LENGTH + slot_size
        if len(body) != _MESSAGES_HEAD.size + count * stride:
            raise ValueError("messages body has the wrong length")
        slots = []
        offset = _MESSAGES_HEAD.size
        for _ in range(count):
            kind, length = _SLOT_HEAD.unpack_from(body, offset)
            if length > slot_size:
                raise ValueError("slot length above slot_size")
            start = offset + SLOT_HEADER_LENGTH
            slots.append(Slot(kind, body[start : start + length]))
            offset += stride
        return cls(lease_id, slot_size, tuple(slots), request_id=request_id)


@dataclass(frozen=True)
class AckOk(_Message):
    """How many messages the ack deleted."""

    TYPE, NAME = 0x86, "ack_ok"
    deleted: int
    request_id: int = _request_id_field()

    def _validate(self):
        super()._validate()
        _check_uint("deleted", self.deleted, 32)

    def _encode_body(self, fill):
        return _U32.pack(self.deleted)

    @classmethod
    def _decode_body(cls, body, request_id):
        (deleted,) = _U32.unpack(body)
        return cls(deleted, request_id=request_id)


@dataclass(frozen=True)
class ForgetOk(_Message):
    """The client is forgotten; the connection is unauthenticated."""

    TYPE, NAME = 0x87, "forget_ok"
    request_id: int = _request_id_field()


@dataclass(frozen=True)
class Pong(_Message):
    """The answer to PING."""

    TYPE, NAME = 0x88, "pong"
    request_id: int = _request_id_field()


_U16 = struct.Struct(">H")


@dataclass(frozen=True)
class Error(_Message):
    """A typed refusal of the request with the same id (0 if unparsed)."""

    TYPE, NAME = 0xFF, "error"
    code: int
    message: str = ""
    request_id: int = _request_id_field()

    def _validate(self):
        super()._validate()
        _check_uint("code", self.code, 16)
        if not isinstance(self.message, str):
            raise ValueError("message must be a str")
        if len(self.message.encode("utf-8")) > MAX_ERROR_MESSAGE:
            raise ValueError(f"message longer than {MAX_ERROR_MESSAGE} bytes")

    def _encode_body(self, fill):
        return _U16.pack(self.code) + self.message.encode("utf-8")

    @classmethod
    def _decode_body(cls, body, request_id):
        (code,) = _U16.unpack_from(body)
        try:
            code = ErrorCode(code)
        except ValueError:
            pass  # a newer provider's code: keep the number
        return cls(code, body[_U16.size :].decode("utf-8"), request_id=request_id)

    def as_exception(self):
        """:returns: this answer as a ``RemoteError``."""
        return RemoteError(self.code, self.message, self.request_id)


REQUEST_TYPES = {m.TYPE: m for m in (Challenge, Register, Auth, Send, Pull, Ack, Forget, Ping)}
RESPONSE_TYPES = {
    m.TYPE: m
    for m in (ChallengeOk, Registered, AuthOk, Sent, Messages, AckOk, ForgetOk, Pong, Error)
}
#: The successful answer to each request; any request may instead get ERROR.
EXPECTED_RESPONSE = {
    Challenge: ChallengeOk,
    Register: Registered,
    Auth: AuthOk,
    Send: Sent,
    Pull: Messages,
    Ack: AckOk,
    Forget: ForgetOk,
    Ping: Pong,
}


def register_signed_bytes(provider_identity, nonce, address):
    """
    :returns: the bytes a client signs with its identity key to register:
        ``REGISTER_CONTEXT || provider_identity || nonce || address``.
    """
    _check_bytes("provider_identity", provider_identity, ADDRESS_LENGTH)
    _check_bytes("nonce", nonce, NONCE_LENGTH)
    _check_bytes("address", address, ADDRESS_LENGTH)
    return REGISTER_CONTEXT + provider_identity + nonce + address


def encode(message, *, fill=os.urandom):
    """
    Encode ``message`` as a whole frame, length prefix included.

    :param fill: ``fill(n)`` returns ``n`` bytes to fill unused slot space
        of a MESSAGES response.
    :raises ValueError: if the frame would exceed its direction's limit.
    """
    body = message._encode_body(fill)
    length = _BODY_HEAD.size + len(body)
    limit = MAX_RESPONSE_FRAME if message.TYPE in RESPONSE_TYPES else MAX_REQUEST_FRAME
    if length > limit:
        raise ValueError(f"{message.NAME} frame of {length} bytes exceeds {limit}")
    return _FRAME_HEAD.pack(length, message.TYPE, message.request_id) + body


def _decode(frame_body, types, limit, malformed):
    if len(frame_body) > limit:
        raise FrameTooLarge(f"frame of {len(frame_body)} bytes exceeds {limit}")
    if len(frame_body) < _BODY_HEAD.size:
        raise malformed("frame shorter than its type and request id")
    message_type, request_id = _BODY_HEAD.unpack_from(frame_body)
    cls = types.get(message_type)
    if cls is None:
        raise UnknownType(f"unknown message type 0x{message_type:02x}", request_id)
    body = frame_body[_BODY_HEAD.size :]
    try:
        return cls._decode_body(body, request_id)
    except (ValueError, struct.error) as e:
        # UnicodeDecodeError is a ValueError; so is any field check that a
        # decoder forgot to make itself: all are the peer's malformed bytes.
        raise malformed(f"bad {cls.NAME}: {e}", request_id) from None


def decode_request(frame_body):
    """
    Decode a client's frame (the bytes after the length prefix).

    :raises ClientApiError: ``MalformedRequest``, ``UnknownType`` or
        ``FrameTooLarge``; nothing else.
    """
    return _decode(frame_body, REQUEST_TYPES, MAX_REQUEST_FRAME, MalformedRequest)


def decode_response(frame_body):
    """
    Decode a provider's frame (the bytes after the length prefix).

    :raises ClientApiError: ``MalformedResponse``, ``UnknownType`` or
        ``FrameTooLarge``; nothing else.
    """
    return _decode(frame_body, RESPONSE_TYPES, MAX_RESPONSE_FRAME, MalformedResponse)
