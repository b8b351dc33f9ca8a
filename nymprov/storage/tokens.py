"""Checking an offered token hash against the stored one."""

import hmac

#: Compared with when an address has no token, so that an unknown address
#: costs the same work as a known one with a wrong token.
_NO_TOKEN = bytes(32)


def token_matches(stored, offered):
    """
    :param stored: the stored token hash, or ``None`` for an unknown address.
    :param bytes offered: the hash of the token offered.
    :returns: whether they match; one constant-time comparison either way.
    """
    matched = hmac.compare_digest(_NO_TOKEN if stored is None else stored, offered)
    return matched and stored is not None
