"""Responses: what a provider answers."""

import struct
from dataclasses import dataclass

from nymprov.wire.clientapi.fields import (
    ADDRESS_LENGTH,
    MAX_ERROR_MESSAGE,
    NONCE_LENGTH,
    SLOT_DUMMY,
    SLOT_HEADER_LENGTH,
    SLOT_MESSAGE,
    TOKEN_LENGTH,
    _Message,
    _U16,
    _U32,
    _check_bytes,
    _check_uint,
    _request_id_field,
)
from nymprov.wire.clientapi.errors import (
    ErrorCode,
    RemoteError,
)



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
