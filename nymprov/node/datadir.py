"""
A node's data directory as its start makes it: keys, certificate and the
files made later, each remembered so that a start that fails removes what
it created, and each given to the user ``twistd --uid/--gid`` switches to.
"""

import os

from nymprov.keys import IDENTITY_KEY_FILE, SPHINX_KEY_FILE, load_or_create_keys

#: Files SQLite makes beside a database.
_SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")


class DataDirectory:
    """
    :param str path: the data directory.
    :param owner: ``(uid, gid)`` to give what is created to, or ``None``
        to leave it to the user running the node.
    """

    def __init__(self, path, owner=None):
        self.path = path
        self.owner = owner
        self._created = []  # in creation order

    def _note_missing_directories(self, path):
        missing = []
        while path and not os.path.lexists(path):
            missing.append(path)
            parent = os.path.dirname(path)
            if parent == path:
                break
            path = parent
        return list(reversed(missing))

    def _made(self, paths):
        for path in paths:
            if os.path.lexists(path):
                self._created.append(path)
                self._give(path)

    def _give(self, path):
        if self.owner is not None:
            uid, gid = self.owner
            os.chown(path, -1 if uid is None else uid, -1 if gid is None else gid)

    def keys(self):
        """
        :returns: the node's keys, made first if missing.
        :raises ConfigError: naming the file that cannot be read or made.
        """
        return self._making(
            [IDENTITY_KEY_FILE, SPHINX_KEY_FILE], lambda: load_or_create_keys(self.path)
        )

    def certificate(self):
        """:returns: the TLS certificate, made first if missing."""
        from nymprov.net.tls import TLS_CERTIFICATE_FILE, TLS_KEY_FILE, load_or_create_certificate

        return self._making(
            [TLS_KEY_FILE, TLS_CERTIFICATE_FILE], lambda: load_or_create_certificate(self.path)
        )

    def _making(self, names, make):
        directories = self._note_missing_directories(self.path)
        files = [os.path.join(self.path, name) for name in names]
        missing = [path for path in files if not os.path.lexists(path)]
        try:
            return make()
        finally:
            self._made(directories + missing)

    def database(self, path):
        """
        Note the SQLite file at ``path``, which the store makes later, to
        be removed with its companions if the start fails and it is new.
        Its directory is made (and given away) now, so that a store opened
        after privileges are dropped can make the file.
        """
        directories = self._note_missing_directories(os.path.dirname(path))
        if directories:
            os.makedirs(directories[-1], mode=0o700)
            self._made(directories)
        if not os.path.lexists(path):
            self._created.extend(path + suffix for suffix in ("",) + _SQLITE_COMPANIONS)

    def remove_created(self):
        """Remove what was created here, newest first; what is gone is skipped."""
        created, self._created = self._created, []
        for path in reversed(created):
            try:
                if os.path.isdir(path) and not os.path.islink(path):
                    os.rmdir(path)
                else:
                    os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError:
                # Not empty (someone else's file) or not ours to remove:
                # leave it rather than guess.
                pass
