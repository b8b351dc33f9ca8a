"""
Listening sockets bound once by a parent process and shared by the
children it starts (``nym-provider run --processes N``): every child
accepts from the same socket, so the kernel hands each new connection to
whichever process is ready, and a child that dies takes no queued
connection with it.

The parent names the sockets in the environment variable
:data:`ENVIRONMENT`, a JSON object mapping each endpoint string to a list
of ``[file descriptor, address family]``, one per time the endpoint is
listened on (``tcp:0`` for the mix link and the client API are two sockets),
taken in the order the child listens.
"""

import json
import os
import socket

ENVIRONMENT = "NYMPROV_INHERITED_LISTENERS"

#: Endpoint types whose listening socket can be shared this way.
SHAREABLE = ("tcp", "tcp6")


class NotShareable(ValueError):
    """An endpoint whose socket cannot be shared between processes."""


def check_shareable(descriptions):
    """
    :raises NotShareable: for the first endpoint in ``descriptions`` that
        is not ``tcp:`` or ``tcp6:``.
    """
    for description in descriptions:
        if description.split(":", 1)[0] not in SHAREABLE:
            raise NotShareable(f"{description!r}: only tcp: and tcp6: endpoints can be shared by processes")


def bind_shared(reactor, descriptions):
    """
    Bind every endpoint in ``descriptions`` in this process without
    accepting on it.

    :returns: ``(ports, inherited)``: the Twisted ports, one per
        description in order (keep them open while children run), and the
        mapping to put in :data:`ENVIRONMENT`.
    :raises NotShareable: for an endpoint that is not ``tcp:`` or ``tcp6:``.
    """
    from twisted.internet.endpoints import serverFromString
    from twisted.internet.protocol import Factory, Protocol

    check_shareable(descriptions)
    ports, inherited = [], {}
    for description in descriptions:
        d = serverFromString(reactor, description).listen(Factory.forProtocol(Protocol))
        # TCP endpoints listen at once: the Deferred has fired.
        failures = []
        d.addErrback(failures.append)
        if failures:
            for port in ports:
                port.stopListening()
            failures[0].raiseException()
        port = d.result
        # The children accept; this process only holds the socket.
        port.stopReading()
        ports.append(port)
        inherited.setdefault(description, []).append([port.fileno(), int(port.socket.family)])
    return ports, inherited


def inherited_listeners(environ=os.environ):
    """
    :returns: the mapping from endpoint string to a list of ``(fd,
        family)`` that a parent passed, or an empty one.
    """
    text = environ.get(ENVIRONMENT)
    if not text:
        return {}
    try:
        entries = json.loads(text)
        return {str(description): [(int(fd), socket.AddressFamily(int(family))) for fd, family in sockets]
                for description, sockets in entries.items()}
    except (ValueError, TypeError, AttributeError) as error:
        raise ValueError(f"{ENVIRONMENT} is malformed: {error}") from None


def adopt(reactor, fd, family, factory):
    """
    Accept connections for ``factory`` on the inherited socket ``fd``.

    :returns: the listening port; ``fd`` itself is closed (the port holds
        its own copy).
    """
    try:
        return reactor.adoptStreamPort(fd, family, factory)
    finally:
        os.close(fd)


_inherited = None


def take_inherited(description):
    """
    :returns: the next ``(fd, family)`` a parent bound for ``description``
        (read from :data:`ENVIRONMENT` once per process), or ``None``.
    """
    global _inherited
    if _inherited is None:
        _inherited = inherited_listeners()
    sockets = _inherited.get(description)
    return sockets.pop(0) if sockets else None
