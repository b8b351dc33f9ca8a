"""Requests: what a client sends its provider."""

import struct
from dataclasses import dataclass

from nymprov.sphinx.params import PacketSize
from nymprov.wire.clientapi.fields import (
    ADDRESS_LENGTH,
    MAX_INVITE,
    PULL_FLAG_PAD,
    SIGNATURE_LENGTH,
    TOKEN_LENGTH,
    _Message,
    _U64,
    _check_bytes,
    _check_uint,
    _request_id_field,
)



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
        if not isinstance(self.packet, bytes) or not PacketSize.is_packet_length(len(self.packet)):
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
