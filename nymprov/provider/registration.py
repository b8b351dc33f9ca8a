"""Who may register: the provider's registration mode and invite codes."""

import hashlib
import hmac

#: Who may register (``--registration``): anyone; holders of an invite
#: code; no new client.  Registered clients may always rotate their token.
REGISTRATION_MODES = ("open", "invite", "closed")


def _invite_digest(code):
    return hashlib.sha256(b"nymprov invite\x00" + code).digest()


class RegistrationPolicy:
    """
    :param str mode: ``"open"``, ``"invite"`` (new clients need an invite
        code) or ``"closed"`` (no new clients).
    :param invite_codes: accepted codes, ``str`` (taken as UTF-8) or bytes.
    :param store: an ``IInboxStore``, asked whether an address is known.
    """

    def __init__(self, mode, invite_codes, store):
        if mode not in REGISTRATION_MODES:
            raise ValueError(f"registration must be one of {', '.join(REGISTRATION_MODES)}")
        self.mode = mode
        self._store = store
        self._invite_digests = ()
        self.set_invite_codes(invite_codes)

    def set_invite_codes(self, invite_codes):
        """Accept ``invite_codes`` (and only them) from now on."""
        # Codes from a config are text; the wire carries bytes.  Only their
        # digests are kept, so every comparison is of 32 bytes with 32 bytes
        # and its time says nothing about a code's length either.
        self._invite_digests = tuple(
            _invite_digest(code.encode("utf-8") if isinstance(code, str) else bytes(code))
            for code in invite_codes
        )

    def allows(self, address, invite):
        """
        :returns: whether ``address`` may register with ``invite`` now.
            Registered clients may always rotate their token, unless the
            operator revoked them.
        """
        if self._store.is_revoked(address):
            return False
        if self.mode == "open" or self._store.is_registered(address):
            return True
        if self.mode == "closed":
            return False
        # Compare against every code, in constant time each, so that the
        # answer's timing says nothing about how close a guess was.
        offered = _invite_digest(invite)
        matched = False
        for digest in self._invite_digests:
            matched |= hmac.compare_digest(digest, offered)
        return matched
