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
    each one revokes its own, told by the store (:meth:`revoke_stale`).

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

    def changed_elsewhere(self, address, token_hash, store):
        """
        A store shared with other processes says ``address`` now has the
        token ``token_hash`` (``None``: forgotten), or, with ``address``
        ``None``, that changes may have been missed.
        """
        if address is None:
            self.recheck(store.authenticate)
        else:
            self.revoke_stale(address, token_hash)

    def revoke_stale(self, address, token_hash):
        """
        End the sessions of ``address`` whose token is not ``token_hash``
        (all of them if ``token_hash`` is ``None``: the address was
        forgotten); told by a store that another process changed it.

        :returns: how many sessions were ended.
        """
        self.revocations += 1
        ended = [
            session
            for session in self._by_address.get(address, ())
            if token_hash is None or getattr(session, "token_hash", None) != token_hash
        ]
        for session in ended:
            session.revoke()
        if ended:
            self._counters.incr("client_api.revoked", amount=len(ended))
            self.log.info("client {client}: token changed or forgotten elsewhere, {count} sessions closed",
                          client=_short(address), count=len(ended))
        return len(ended)

    def recheck(self, authenticate):
        """
        Ask ``authenticate(address, token_hash)`` (a Deferred of a bool)
        about every session, and end those whose token no longer holds.
        """
        self.revocations += 1
        for address, sessions in list(self._by_address.items()):
            for session in list(sessions):
                d = authenticate(address, getattr(session, "token_hash", None) or b"")

                def checked(ok, address=address, session=session):
                    if not ok and session in self._by_address.get(address, ()):
                        session.revoke()
                        self._counters.incr("client_api.revoked")

                d.addCallbacks(checked, lambda f: self.log.failure("cannot recheck a session", f))
