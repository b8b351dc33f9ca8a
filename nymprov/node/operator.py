"""
The operator's parts of a node's tree: the HTTP API and the admin socket
(listeners bound with the node's others), the start summary line, and the
SIGHUP reloader.
"""

import os

from twisted.internet.endpoints import quoteStringArgument
from twisted.logger import Logger

from nymprov._version import __version__
from nymprov.httpapi.admin import make_admin_site
from nymprov.httpapi.resources import make_site
from nymprov.net.addresses import show_address
from nymprov.node.reload import HangupReloader
from nymprov.node.service import ListenerService, Part

log = Logger(namespace="nymprov.node.operator")


def http_listener(reactor, descriptions):
    """:returns: the listener of the operator's HTTP API (bound with the node's others)."""
    return ListenerService(reactor, descriptions, "operator HTTP API")


def admin_listener(reactor, path):
    """
    :param path: the admin socket's path, or ``None`` for none.
    :returns: the listener of the admin socket: mode 0600; a socket left by
        a process that died is replaced, one in use is not.
    """
    descriptions = [] if path is None else [f"unix:{quoteStringArgument(path)}:mode=600:lockfile=1"]
    return ListenerService(reactor, descriptions, "admin socket")


def serve_http(listener, status):
    """Serve ``status`` (a ``NodeStatus``) on ``listener``."""
    status.http_api = listener
    listener.serve(make_site(status))


def serve_admin(listener, routes, path, owner):
    """
    Serve the admin ``routes`` on ``listener``; under ``twistd --uid`` the
    socket (bound while privileged) is given to that user.
    """
    listener.serve(make_admin_site(routes))
    if owner is not None and path is not None and listener.ports:
        os.chown(path, *owner)


def summary_part(node, describe):
    """
    :param describe: returns the text of the start summary; it runs once
        every port listens.
    :returns: a part that logs it when the node has started.
    """

    def summary():
        log.info("{name} {version} started: {summary}", name=node.name, version=__version__, summary=describe())

    # Once the reactor runs (at once if it does): by then it handles
    # SIGINT and SIGTERM, so whoever waits for this line may signal.
    return Part("start summary", lambda: node._reactor.callWhenRunning(summary) and None)


def listening(*listeners):
    """:returns: ``"ADDRESS, ADDRESS"`` of what ``listeners`` listen on, or ``none``."""
    addresses = [show_address(port.getHost()) for listener in listeners for port in listener.ports]
    return ", ".join(addresses) or "none"


def reload_on_hangup(node, read_config, reactor, node_log=None):
    """
    Make SIGHUP reload ``node``: reopen ``node_log``'s file (a
    :class:`nymprov.cli.logs.NodeLog`, when the command line made one), read
    the configuration again with ``read_config()`` and hand it to
    ``node.reload(config)``, which returns ``(reloaded, not reloaded)``.

    :returns: the :class:`HangupReloader`, a child of ``node``.
    """

    def reload():
        reopened = node_log is not None and node_log.reopen()
        try:
            config = read_config()
        except Exception as e:
            # A configuration that does not parse changes nothing.
            log.error("SIGHUP: the configuration is not valid, nothing was reloaded: {error}", error=e)
            return
        done = []
        if reopened:
            done.append("log file reopened")
        if node_log is not None and node_log.level != config.log_level:
            node_log.set_level(config.log_level)
            done.append(f"log level {config.log_level}")
        try:
            applied, _ = node.reload(config)
        except Exception as e:
            log.error("SIGHUP: could not apply the configuration, nothing more was reloaded: {error}", error=e)
            applied = []
        done += ["--" + name.replace("_", "-") for name in applied]
        log.info("SIGHUP: reloaded: {what}", what=", ".join(done) or "nothing had changed")

    reloader = HangupReloader(reload, reactor)
    reloader.setServiceParent(node)
    return reloader
