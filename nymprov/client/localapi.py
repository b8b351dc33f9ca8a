"""
The running client's local API: JSON messages over a WebSocket (autobahn),
shaped like Nym's native client's so that code written for it ports
easily.  Every request is one JSON object in a text frame; see
``doc/client.md`` for each message.

This module holds the wire side (framing, JSON, typed errors) and a small
client for it (``nym-client send``/``receive`` and the tests use it); what
the requests do is :class:`nymprov.client.daemon.ClientDaemon`'s.
"""

import base64
import binascii
import json

from autobahn.twisted.websocket import (
    ConnectionDeny,
    WebSocketClientFactory,
    WebSocketClientProtocol,
    WebSocketServerFactory,
    WebSocketServerProtocol,
)
from twisted.internet.defer import Deferred, DeferredQueue, maybeDeferred
from twisted.internet.endpoints import clientFromString
from twisted.logger import Logger
from twisted.python.failure import Failure

#: Largest frame (and message) the API takes: a message of a few MB.
MAX_FRAME = 4 * 1024 * 1024


class LocalApiError(Exception):
    """A request the local API refuses; ``kind`` names why."""

    def __init__(self, kind, message):
        Exception.__init__(self, message)
        self.kind = kind


def message_field(request):
    """
    The bytes of a request's message: ``message`` (text, sent as UTF-8)
    or ``messageBase64`` (any bytes).

    :raises LocalApiError: if neither is a string of the right form.
    """
    if isinstance(request.get("message"), str):
        return request["message"].encode("utf-8")
    if isinstance(request.get("messageBase64"), str):
        try:
            return base64.b64decode(request["messageBase64"], validate=True)
        except (binascii.Error, ValueError):
            raise LocalApiError("bad_field", "messageBase64 is not base64") from None
    raise LocalApiError("missing_field", "a message (text) or messageBase64 is needed")


def message_json(data):
    """The JSON fields for ``data``: ``message`` if it is UTF-8 text, else ``messageBase64``."""
    try:
        return {"message": data.decode("utf-8")}
    except UnicodeDecodeError:
        return {"messageBase64": base64.b64encode(data).decode("ascii")}


class LocalApiServerProtocol(WebSocketServerProtocol):
    """One application's connection; its requests go to the factory's handler."""

    log = Logger()
    #: Whether received messages are handed to this connection; a
    #: ``?receive=no`` in the URL says not (a nymprov extension).
    receives = True

    def onConnect(self, request):
        # A browser names the page behind every handshake; any page the
        # user opens could otherwise drive the client over loopback.
        # Programs send no Origin (autobahn gives ""). autobahn's own
        # allowedOrigins also requires the page's port to be the API's,
        # which no page served elsewhere has, so the check is ours.
        origin = request.origin.rstrip("/").lower() if request.origin else ""
        if origin and origin not in self.factory.allowed_origins:
            self.factory.handler.counters.incr("api.refused", "origin")
            raise ConnectionDeny(ConnectionDeny.FORBIDDEN, "this origin may not use the local API")
        self.receives = request.params.get("receive") != ["no"]

    def onOpen(self):
        self.factory.handler.attach(self)

    def onClose(self, wasClean, code, reason):
        self.factory.handler.detach(self)

    def onMessage(self, payload, isBinary):
        if isBinary:
            self.send_error("binary_not_supported", "send JSON in a text frame", None)
            return
        try:
            request = json.loads(payload.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            self.send_error("malformed_json", "not a JSON text", None)
            return
        if not isinstance(request, dict) or not isinstance(request.get("type"), str):
            self.send_error("malformed_request", "a request is a JSON object with a string 'type'", None)
            return
        request_id = request.get("id")
        d = maybeDeferred(self.factory.handler.handle, request, self)
        d.addCallbacks(self._answer, self._failed, callbackArgs=(request_id,), errbackArgs=(request_id,))

    def _answer(self, response, request_id):
        if response is not None:
            if request_id is not None:
                # Every answer repeats the id of its request, if it had one.
                response = {**response, "id": request_id}
            self.send_json(response)

    def _failed(self, failure, request_id):
        if failure.check(LocalApiError):
            self.send_error(failure.value.kind, str(failure.value), request_id)
            return
        kind = getattr(failure.value, "reason", None)
        if kind is None:
            self.log.failure("a local API request failed", failure)
            kind = "internal"
        self.send_error(kind, failure.getErrorMessage(), request_id)

    def send_json(self, message):
        """Send one JSON message to the application (nothing if it is gone)."""
        if self.state == self.STATE_OPEN:
            self.sendMessage(json.dumps(message).encode("utf-8"), isBinary=False)

    def send_error(self, kind, message, request_id):
        """Send ``{"type": "error", "kind": ..., "message": ...}``, with ``id`` if the request had one."""
        error = {"type": "error", "kind": kind, "message": message}
        if request_id is not None:
            error["id"] = request_id
        self.factory.handler.counters.incr("api.errors", kind)
        self.send_json(error)


def local_api_factory(handler, url, allowed_origins=()):
    """
    :param handler: has ``attach(app)``, ``detach(app)``,
        ``handle(request, app) -> dict | Deferred`` and ``counters``.
    :param allowed_origins: the web origins (``scheme://host[:port]``)
        whose pages may connect; a handshake with any other Origin is
        refused.
    :returns: a WebSocket server factory for the local API at ``url``.
    """
    factory = WebSocketServerFactory(url)
    factory.protocol = LocalApiServerProtocol
    factory.handler = handler
    factory.allowed_origins = frozenset(origin.rstrip("/").lower() for origin in allowed_origins)
    # Text that is not UTF-8 gets the typed malformed_json error like any
    # other bad request, instead of autobahn closing the connection.
    factory.setProtocolOptions(maxFramePayloadSize=MAX_FRAME, maxMessagePayloadSize=MAX_FRAME,
                               utf8validateIncoming=False)
    return factory


# -- a client of the local API --------------------------------------------------


class _ApiClientProtocol(WebSocketClientProtocol):
    def __init__(self):
        WebSocketClientProtocol.__init__(self)
        self.opened = Deferred()
        self.closed = Deferred()
        self.messages = DeferredQueue()

    def onOpen(self):
        self.opened.callback(self)

    def onMessage(self, payload, isBinary):
        self.messages.put(json.loads(payload.decode("utf-8")))

    def onClose(self, wasClean, code, reason):
        if not self.opened.called:
            self.opened.errback(Failure(ConnectionError(f"WebSocket closed: {reason}")))
        self.closed.callback(None)


class LocalApiClient:
    """An application's connection to a running client's local API."""

    def __init__(self, protocol):
        self._protocol = protocol

    def request(self, message):
        """Send one JSON request."""
        self._protocol.sendMessage(json.dumps(message).encode("utf-8"), isBinary=False)

    def send_raw(self, payload, binary=False):
        """Send a frame as it is (tests send garbage this way)."""
        self._protocol.sendMessage(payload, isBinary=binary)

    def next_message(self):
        """:returns: a Deferred firing with the next JSON message from the client."""
        return self._protocol.messages.get()

    def close(self):
        """:returns: a Deferred firing once the connection is closed."""
        if not self._protocol.closed.called:
            self._protocol.sendClose()
        d = Deferred()
        self._protocol.closed.addBoth(lambda result: (d.callback(None), result)[1])
        return d


async def connect_local_api(reactor, url, timeout=5, origin=None):
    """
    Connect to the local API at ``url`` (``ws://127.0.0.1:PORT``);
    ``origin`` sends an Origin header, as a browser would.

    :returns: a :class:`LocalApiClient`.
    :raises ConnectionError: (or Twisted's connection errors) if nothing
        answers there.
    """
    factory = WebSocketClientFactory(url, origin=origin)
    factory.protocol = _ApiClientProtocol
    factory.setProtocolOptions(maxFramePayloadSize=MAX_FRAME, maxMessagePayloadSize=MAX_FRAME)
    endpoint = clientFromString(reactor, f"tcp:host={factory.host}:port={factory.port}:timeout={timeout}")
    protocol = await endpoint.connect(factory)
    await protocol.opened
    return LocalApiClient(protocol)
