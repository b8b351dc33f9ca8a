"""Constants and the field checks that every client-API message shares."""

import struct
from dataclasses import field


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
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


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
