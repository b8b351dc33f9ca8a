"""Whole frames: encoding any message, decoding requests and responses."""

import os
import struct

from nymprov.wire.clientapi.fields import (
    ADDRESS_LENGTH,
    MAX_REQUEST_FRAME,
    MAX_RESPONSE_FRAME,
    NONCE_LENGTH,
    REGISTER_CONTEXT,
    _BODY_HEAD,
    _FRAME_HEAD,
    _check_bytes,
)
from nymprov.wire.clientapi.errors import (
    FrameTooLarge,
    MalformedRequest,
    MalformedResponse,
    UnknownType,
)
from nymprov.wire.clientapi.requests import (
    Ack,
    Auth,
    Challenge,
    Forget,
    Ping,
    Pull,
    Register,
    Send,
)
from nymprov.wire.clientapi.responses import (
    AckOk,
    AuthOk,
    ChallengeOk,
    Error,
    ForgetOk,
    Messages,
    Pong,
    Registered,
    Sent,
)


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
