"""
``nym-provider clients|invites|status``: the admin commands, which talk to
a running provider over its admin socket.
"""

import json

from twisted.python import usage

from nymprov.options import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, InvalidOption, parse_command_options

PROGRAM = "nym-provider"

#: ``command -> {action: (method, path, argument name or None, summary)}``.
ACTIONS = {
    "clients": {
        "list": ("GET", "/clients", None, "list registered clients: inbox size, sessions, revoked"),
        "revoke": ("POST", "/clients/revoke", "client",
                   "end the client's sessions; its token stops working and it may not register again"),
        "forget": ("POST", "/clients/forget", "client",
                   "delete the client and its messages, ending its sessions"),
    },
    "invites": {
        "list": ("GET", "/invites", None, "list the accepted invite codes and where each comes from"),
        "add": ("POST", "/invites/add", "code", "accept an invite code (kept in the data directory)"),
        "remove": ("POST", "/invites/remove", "code", "stop accepting an invite code added here"),
    },
    "status": {
        "": ("GET", "/status", None, "readiness, store sizes, queues, workers, keys and counters"),
    },
}


class AdminOptions(usage.Options):
    """Where the running provider's admin socket is."""

    optParameters = [
        ["config", "c", None, "the provider's TOML file of settings (for its data-dir and admin-socket)"],
        ["data-dir", "d", None, "the provider's data directory (the socket is DATA_DIR/admin.sock)"],
        ["admin-socket", None, None, "the admin socket's path"],
    ]

    def __init__(self, command):
        usage.Options.__init__(self)
        self.command = command
        actions = ACTIONS[command]
        if "" in actions:
            self.synopsis = f"Usage: {PROGRAM} {command} [options]"
            self.longdesc = actions[""][3]
        else:
            self.synopsis = f"Usage: {PROGRAM} {command} {'|'.join(actions)} [ARGUMENT] [options]"
            self.longdesc = "; ".join(f"{name}: {a[3]}" for name, a in actions.items())

    def opt_version(self):
        """Print the version and exit."""
        from nymprov._version import __version__

        print(f"nymprov {__version__}")
        raise SystemExit(0)

    def parseOptions(self, options=None):
        # Twisted's parser stops at the first argument that is not an
        # option, and here the action comes first: options go in front.
        taking_value = {name for long, short, *_ in self.optParameters for name in (long, short) if name}
        flags, positional = [], []
        tokens = iter(options or [])
        for token in tokens:
            if token.startswith("-") and token != "-":
                flags.append(token)
                if "=" not in token and token.lstrip("-") in taking_value:
                    flags.append(next(tokens, ""))
            else:
                positional.append(token)
        usage.Options.parseOptions(self, flags + positional)

    def parseArgs(self, *args):
        actions = ACTIONS[self.command]
        action, rest = ("", list(args)) if "" in actions else (args[0] if args else None, list(args[1:]))
        if action not in actions:
            raise usage.UsageError(f"{self.command}: expected one of {', '.join(actions)}")
        method, path, argument, _ = actions[action]
        if (argument is None) != (not rest) or len(rest) > 1:
            wanted = f"one {argument.upper()}" if argument else "no argument"
            raise usage.UsageError(f"{self.command} {action}: takes {wanted}")
        self.request = (method, path, {argument: rest[0]} if argument else None)

    def postOptions(self):
        if self["admin-socket"]:
            self.socket = self["admin-socket"]
            return
        from nymprov.provider.config import load_config

        config = load_config({"config": self["config"], "data-dir": self["data-dir"]})
        if config.admin_socket is None:
            raise InvalidOption("--admin-socket: this provider's configuration has no admin socket")
        self.socket = config.admin_socket


def request(reactor, socket, method, path, body):
    """
    Send one request to the admin socket.

    :returns: a Deferred firing with ``(HTTP status, decoded JSON answer)``.
    """
    from twisted.internet.endpoints import UNIXClientEndpoint
    from twisted.web.client import Agent, readBody
    from twisted.web.http_headers import Headers
    from twisted.web.iweb import IAgentEndpointFactory
    from zope.interface import implementer

    @implementer(IAgentEndpointFactory)
    class _Socket:
        def endpointForURI(self, uri):
            return UNIXClientEndpoint(reactor, socket, timeout=10)

    producer = None
    if body is not None:
        from twisted.web.client import FileBodyProducer
        import io

        producer = FileBodyProducer(io.BytesIO(json.dumps(body).encode()))
    agent = Agent.usingEndpointFactory(reactor, _Socket())
    d = agent.request(method.encode(), b"http://admin" + path.encode(),
                      Headers({b"content-type": [b"application/json"]}), producer)

    def read(response):
        return readBody(response).addCallback(lambda data: (response.code, json.loads(data)))

    return d.addCallback(read)


def show(command, action, answer, out):
    """Print ``answer`` for a person: a table for lists, lines for the rest."""
    if command == "clients" and action == "list":
        rows = answer["clients"]
        print(f"{len(rows)} clients", file=out)
        for row in rows:
            flags = " revoked" if row["revoked"] else ""
            print(f"{row['client']}  messages {row['messages']}  bytes {row['bytes']}"
                  f"  sessions {row['sessions']}{flags}", file=out)
    elif command == "invites" and action == "list":
        for invite in answer["invites"]:
            print(f"{invite['code']}  ({invite['source']})", file=out)
    else:
        print(json.dumps(answer, indent=2, sort_keys=True), file=out)


def main(command, args, stdout, stderr):
    """Run ``nym-provider COMMAND ARGS`` for an admin command; returns the exit code."""
    options = AdminOptions(command)
    failed = parse_command_options(options, args, stdout, stderr, PROGRAM)
    if failed is not None:
        return failed
    method, path, body = options.request
    from twisted.internet.task import react

    outcome = {"code": EXIT_OK}

    def run(reactor):
        d = request(reactor, options.socket, method, path, body)

        def answered(result):
            status, answer = result
            if status != 200:
                print(f"{PROGRAM} {command}: {answer.get('error', status)}", file=stderr)
                outcome["code"] = EXIT_USAGE if 400 <= status < 500 else EXIT_FAILURE
                return
            show(command, args[0] if args and command != "status" else "", answer, stdout)

        def unreachable(failure):
            print(f"{PROGRAM} {command}: cannot reach the provider's admin socket"
                  f" {options.socket}: {failure.getErrorMessage()} (is it running?)", file=stderr)
            outcome["code"] = EXIT_FAILURE

        return d.addCallbacks(answered, unreachable)

    try:
        react(run)
    except SystemExit:
        pass
    return outcome["code"]
