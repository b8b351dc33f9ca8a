"""
Checks and identifiers shared by the stores' lease operations.
"""

import secrets

from nymprov.errors import UnknownLease


def new_lease_id():
    """
    :returns: a random lease id, positive and below ``2**63`` (it fits an
        SQLite INTEGER); random, so that one pull's id tells nothing about
        another's.
    """
    return 1 + secrets.randbelow(2**63 - 1)


def check_lease_request(max_count, lease_seconds):
    """
    Refuse a malformed lease request with ``TypeError`` or ``ValueError``.
    """
    if isinstance(max_count, bool) or not isinstance(max_count, int):
        raise TypeError("max_count must be an int")
    if max_count < 0:
        raise ValueError("max_count must not be negative")
    if isinstance(lease_seconds, bool) or not isinstance(lease_seconds, (int, float)):
        raise TypeError("lease_seconds must be a number")
    if not 0 < lease_seconds < float("inf"):
        raise ValueError("lease_seconds must be positive and finite")


def check_lease_id(lease_id):
    """
    Refuse, with ``UnknownLease``, an id that no lease can carry.
    """
    if isinstance(lease_id, bool) or not isinstance(lease_id, int) or not 0 < lease_id < 2**63:
        raise UnknownLease("no such lease")
