"""
The Sphinx payload: its padding, its Lioness layers, and recovering the
message at the end (SPHINX.md §9).
"""

from nymprov.sphinx import lioness
from nymprov.sphinx.errors import InvalidPayload
from nymprov.sphinx.params import LIONESS_MIN_BLOCK, PAYLOAD_OVERHEAD_SIZE, SECURITY_PARAMETER

_LEADING_ZEROS = bytes(SECURITY_PARAMETER)


def check_message_fits(message: bytes, payload_size: int) -> None:
    """
    The crate's payload checks, in its order.

    :raises InvalidPayload: for a payload size below 17 or 32, or a message
        longer than ``payload_size - 17``.
    """
    if payload_size < PAYLOAD_OVERHEAD_SIZE:
        raise InvalidPayload("specified payload_size is smaller than the required overhead")
    if payload_size < LIONESS_MIN_BLOCK - 1:
        raise InvalidPayload("specified payload_size is smaller than lioness block size")
    if len(message) > payload_size - PAYLOAD_OVERHEAD_SIZE:
        raise InvalidPayload("too long message provided")


def encapsulate(message: bytes, payload_keys, payload_size: int) -> bytes:
    """
    Pad ``message`` to ``payload_size`` bytes and encrypt one Lioness layer
    per key, the first key's layer outermost.

    :raises InvalidPayload: if the message does not fit, or the payload is
        too small for Lioness (32 bytes exactly, as in the crate).
    """
    check_message_fits(message, payload_size)
    padded = _LEADING_ZEROS + message + b"\x01"
    payload = padded + bytes(payload_size - len(padded))
    try:
        for key in reversed(payload_keys):
            payload = lioness.encrypt(key, payload)
    except lioness.BlockSizeError as e:
        raise InvalidPayload(f"error while encrypting payload - {e}") from None
    return payload


def unwrap(payload_key: bytes, payload: bytes) -> bytes:
    """
    Remove one Lioness layer.

    :raises InvalidPayload: if the payload has 32 bytes or fewer.
    """
    try:
        return lioness.decrypt(payload_key, payload)
    except lioness.BlockSizeError as e:
        raise InvalidPayload(f"error while unwrapping payload - {e}") from None


def recover_plaintext(payload: bytes) -> bytes:
    """
    The message in a fully unwrapped payload: what follows 16 zero bytes, up
    to the last 0x01. As in the crate, bytes after that 0x01 are not
    checked, so a message ending in 0x01 bytes still round-trips.

    :raises InvalidPayload: without the 16 leading zeros or any 0x01 after
        them.
    """
    if payload[:SECURITY_PARAMETER] != _LEADING_ZEROS:
        raise InvalidPayload("malformed payload - no leading zero padding present")
    marker = payload.rfind(b"\x01", SECURITY_PARAMETER)
    if marker < 0:
        raise InvalidPayload("malformed payload - invalid trailing padding")
    return bytes(payload[SECURITY_PARAMETER:marker])
