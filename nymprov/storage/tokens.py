"""Checking an offered token hash against the stored one."""

import hashlib
import hmac

#: Compared with when an address has no token, so that an unknown address
#: costs the same work as a known one with a wrong token.
_NO_TOKEN = bytes(32)


#: The token hash of a client the operator revoked: no token hashes to it
#: (tokens are random and only their SHA-256 is stored), so its old token
#: stops working, and as a stored value every process of a shared store
#: sees the revocation.
REVOKED_TOKEN_HASH = hashlib.sha256(b"nymprov: revoked by the operator; no token hashes here").digest()


def token_matches(stored, offered):
    """
    :param stored: the stored token hash, or ``None`` for an unknown address.
    :param bytes offered: the hash of the token offered.
    :returns: whether they match; one constant-time comparison either way.
    """
    matched = hmac.compare_digest(_NO_TOKEN if stored is None else stored, offered)
    return matched and stored is not None
