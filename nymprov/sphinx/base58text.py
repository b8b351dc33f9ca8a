"""
Base58 text of 32-byte values (node addresses and keys), for display.
"""

import base58


def decode_32(text, error, what):
    """
    :returns: the 32 bytes that base58 ``text`` encodes.
    :raises error: naming ``what``, if ``text`` is not base58 of 32 bytes.
    """
    try:
        raw = base58.b58decode(text)
    except ValueError:
        raise error(f"{what} is not valid base58") from None
    if len(raw) != 32:
        raise error(f"{what} is {len(raw)} bytes, expected 32")
    return raw
