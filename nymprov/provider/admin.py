"""
What the operator can do to a running provider: list, revoke and forget
clients, manage invite codes, read its status.

Invite codes added here are kept in the data directory (``invites``, mode
0600, one a line), so that they outlast a restart; codes from the
configuration stay the configuration's.  A revocation is kept in the store
(the client's token hash becomes one no token has), so that every process
sharing a PostgreSQL store refuses the client too.
"""

import os

import base58

from twisted.internet.defer import inlineCallbacks

from nymprov.errors import ConfigError
from nymprov.httpapi.admin import AdminError
from nymprov.keys import write_file_atomically
from nymprov.storage.tokens import REVOKED_TOKEN_HASH

INVITES_FILE = "invites"


def parse_client(text):
    """
    :param str text: a client's identity in base58, or a whole client
        address (``identity.encryption@provider``).
    :returns: the 32-byte identity the store knows the client by.
    :raises AdminError: if it is neither.
    """
    identity = text.split("@", 1)[0].split(".", 1)[0]
    try:
        address = base58.b58decode(identity)
    except ValueError:
        address = b""
    if len(address) != 32:
        raise AdminError(f"not a client identity or address: {text!r}")
    return address


def show_client(address):
    return base58.b58encode(address).decode("ascii")


def _read_lines(path):
    try:
        with open(path, encoding="utf-8") as f:
            return [line.strip() for line in f if line.strip()]
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read {path}: {e}")


class ProviderAdmin:
    """
    :param service: the provider service (its ``store``, ``config`` and
        client-API factory's ``registration`` and ``sessions``).
    :param status: its :class:`nymprov.provider.status.ProviderStatus`.
    :param registration: the client API's ``RegistrationPolicy``.
    :param sessions: the client API's ``Sessions``.
    :param clock: for the time of a revocation.
    """

    def __init__(self, service, status, registration, sessions, clock):
        self._service = service
        self._status = status
        self._registration = registration
        self._sessions = sessions
        self._clock = clock
        data_dir = service.config.data_dir
        self._invites_path = os.path.join(data_dir, INVITES_FILE)
        self._config_invites = tuple(service.config.invite_code)
        self._added_invites = _read_lines(self._invites_path)
        self._apply_invites()

    @property
    def _store(self):
        return self._service.store

    # -- clients -------------------------------------------------------------

    def clients(self):
        """:returns: every registered client with its inbox and open sessions."""
        usage = getattr(self._store, "client_usage", None)
        if usage is None:
            raise AdminError("this store cannot list its clients", 501)
        return [
            {"client": show_client(address), "messages": messages, "bytes": size,
             "sessions": self._sessions.count(address), "revoked": self._store.is_revoked(address)}
            for address, messages, size in usage()
        ]

    @inlineCallbacks
    def revoke(self, text):
        """
        The client's token stops working, its open sessions end, and it may
        not register again until it is forgotten; its messages are kept.
        """
        address = parse_client(text)
        if not self._store.is_registered(address):
            raise AdminError(f"no such client: {text}", 404)
        # A token hash no token has: the old token no longer authenticates,
        # and the store (every process sharing it) knows the client revoked.
        yield self._store.register(address, REVOKED_TOKEN_HASH, self._clock.seconds())
        return {"client": show_client(address), "revoked": True,
                "sessions_closed": self._sessions.revoke(address)}

    @inlineCallbacks
    def forget(self, text):
        """The client's registration and messages are deleted and its sessions end."""
        address = parse_client(text)
        if not self._store.is_registered(address):
            raise AdminError(f"no such client: {text}", 404)
        yield self._store.forget(address)
        return {"client": show_client(address), "forgotten": True,
                "sessions_closed": self._sessions.revoke(address)}

    # -- invites -------------------------------------------------------------

    def invites(self):
        """:returns: the accepted invite codes and where each comes from."""
        return [{"code": code, "source": "config"} for code in self._config_invites] + [
            {"code": code, "source": "admin"} for code in self._added_invites
        ]

    def add_invite(self, code):
        code = _check_code(code)
        if code in self._config_invites or code in self._added_invites:
            raise AdminError(f"invite code {code!r} is accepted already")
        self._added_invites.append(code)
        self._save_invites()
        return {"added": code}

    def remove_invite(self, code):
        code = _check_code(code)
        if code in self._config_invites:
            raise AdminError(f"invite code {code!r} is in the configuration:"
                             " remove it there and send SIGHUP")
        if code not in self._added_invites:
            raise AdminError(f"no such invite code: {code!r}", 404)
        self._added_invites.remove(code)
        self._save_invites()
        return {"removed": code}

    def set_config_invites(self, codes):
        """The configuration's codes changed (SIGHUP)."""
        self._config_invites = tuple(codes)
        self._apply_invites()

    def _save_invites(self):
        write_file_atomically(self._invites_path, "".join(c + "\n" for c in self._added_invites).encode())
        self._apply_invites()

    def _apply_invites(self):
        self._registration.set_invite_codes(self._config_invites + tuple(self._added_invites))

    # -- status --------------------------------------------------------------

    @inlineCallbacks
    def status(self):
        """:returns: health, store sizes, queues, workers, keys and counters."""
        status = self._status
        health = status.health()
        sizes = {}
        if getattr(self._store, "state", "open") == "open":
            sizes = yield self._store.sizes()
        service = self._service
        unwrapper = getattr(service, "unwrapper", None)
        return {
            "ready": health.ready,
            "reason": health.reason,
            "description": status.description(),
            "store": dict(sizes),
            "delayed_packets": service.node.delayed_count,
            "neighbours": {
                f"{host}:{port}": {"queued": depth, "connected": up}
                for (host, port), (depth, up) in sorted(service.sender.queue_depths().items())
            },
            "unwrap_workers": len(unwrapper.workers) if unwrapper is not None else 0,
            "registration": self._registration.mode,
            "counters": service.counters.snapshot(),
        }


def _check_code(code):
    if not isinstance(code, str) or not code.strip() or "\n" in code:
        raise AdminError("an invite code is one line of text")
    return code.strip()


def admin_routes(admin):
    """:returns: the admin interface's routes onto ``admin`` (a :class:`ProviderAdmin`)."""
    return {
        ("GET", "/clients"): lambda body: {"clients": admin.clients()},
        ("POST", "/clients/revoke"): lambda body: admin.revoke(body["client"]),
        ("POST", "/clients/forget"): lambda body: admin.forget(body["client"]),
        ("GET", "/invites"): lambda body: {"invites": admin.invites()},
        ("POST", "/invites/add"): lambda body: admin.add_invite(body["code"]),
        ("POST", "/invites/remove"): lambda body: admin.remove_invite(body["code"]),
        ("GET", "/status"): lambda body: admin.status(),
    }
