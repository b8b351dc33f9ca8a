"""
Which client-API connections act for which address, so that a token
rotation or a FORGET ends all the others at once.
"""

from twisted.logger import Logger


def _short(address):
    """A log-safe hint of a client address: its first four bytes."""
    return address[:4].hex()


class Sessions:
    """
    The live sessions of one listener's connections, by client address.

    Only this process's sessions: with a store shared by several processes
    each one revokes its own.

    :param counters: a :class:`nymprov.metrics.Counters`.
    :ivar int revocations: how many revocations there have been; an AUTH
        whose lookup spans one looks again.
    """

    log = Logger()

    def __init__(self, counters):
        self._counters = counters
        self._by_address = {}
        self.revocations = 0

    def bind(self, address, session):
        """``session`` now acts for ``address``."""
        self._by_address.setdefault(address, set()).add(session)

    def unbind(self, address, session):
        """``session`` no longer acts for ``address``."""
        sessions = self._by_address.get(address)
        if sessions is not None:
            sessions.discard(session)
            if not sessions:
                del self._by_address[address]

    def count(self, address):
        """:returns: how many sessions act for ``address`` now."""
        return len(self._by_address.get(address, ()))

    def revoke(self, address, keep=None):
        """
        End every session of ``address`` but ``keep`` (calling each one's
        ``revoke()``), once its token has changed or it was forgotten.

        :returns: how many sessions were ended.
        """
        self.revocations += 1
        ended = [session for session in self._by_address.get(address, ()) if session is not keep]
        for session in ended:
            session.revoke()
        if ended:
            self._counters.incr("client_api.revoked", amount=len(ended))
            self.log.info("client {client}: token changed or forgotten, {count} other sessions closed",
                          client=_short(address), count=len(ended))
        return len(ended)
