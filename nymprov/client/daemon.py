"""
A client that keeps running (``nym-client run``): its shaped streams and
pulls go on whatever its applications do, and applications reach it
through the local WebSocket API (``nymprov.client.localapi``).

Shaping means nothing for a client that connects only when it has
something to send; this one is connected and sending cover all the time.
"""

import collections
import ipaddress
import json
import os
import secrets

from twisted.internet.address import UNIXAddress
from twisted.internet.defer import CancelledError
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger

from nymprov.client.received import ReceivedMessage
from nymprov.client.identity import ClientAddress, InvalidClientAddress
from nymprov.client.localapi import LocalApiError, local_api_factory, message_field, message_json
from nymprov.errors import ConfigError

#: Where a running client tells ``nym-client send``/``receive`` its API.
API_FILE = "client-api.json"
#: Nym's native client listens on 1977; so does this one by default.
DEFAULT_API_LISTEN = "tcp:1977:interface=127.0.0.1"
#: Messages kept for applications while none is connected; past this the
#: client's pulls wait (the provider keeps the rest, up to its quota), so
#: nothing taken from the provider is dropped here.
MAX_BUFFERED = 1000
#: Received messages whose SURBs an application may still reply through.
MAX_SENDER_TAGS = 1000
#: Sends waiting for room in the queue before the API answers ``queue_full``.
MAX_WAITING_SENDS = 256


def _is_local(address):
    if isinstance(address, UNIXAddress):
        return True
    try:
        return ipaddress.ip_address(address.host).is_loopback
    except ValueError:
        return False


def _int_field(request, name, default, low, high):
    value = request.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise LocalApiError("bad_field", f"{name} must be an integer {low}..{high}")
    return value


class ClientDaemon:
    """
    A started :class:`nymprov.client.NymClient` serving the local API.

    :param client: the client (not yet started).
    :param reactor: the reactor.
    :param str listen: the API's endpoint string.
    :param bool allow_public: serve on an address other than loopback or a
        UNIX socket (the operator's explicit choice).
    :param str data_dir: where to write :data:`API_FILE`; ``None`` writes none.
    :param buffered: bytes of messages received earlier and not yet handed
        to an application.
    :param allowed_origins: web origins whose pages may use the API (a
        browser's handshake names its page; others are refused).
    """

    log = Logger()

    def __init__(self, client, reactor, listen=DEFAULT_API_LISTEN, allow_public=False, data_dir=None,
                 buffered=(), allowed_origins=()):
        self.client = client
        self.counters = client.counters
        self._reactor = reactor
        self._listen = listen
        self._allow_public = allow_public
        self._allowed_origins = tuple(allowed_origins)
        self._data_dir = data_dir
        self._apps = set()
        self._buffer = collections.deque(ReceivedMessage(data, b"") for data in buffered)
        self._tags = collections.OrderedDict()  # sender tag -> ReceivedMessage with SURBs
        self._port = None
        self._reading = None
        self.url = None
        self._handlers = {"selfAddress": self._self_address, "send": self._send, "reply": self._reply,
                          "stats": self._stats}

    # -- life cycle -----------------------------------------------------------

    async def start(self):
        """Start the client, then serve the API and write :data:`API_FILE`."""
        await self.client.start()
        self._read_next()
        port = await serverFromString(self._reactor, self._listen).listen(local_api_factory(self, None, self._allowed_origins))
        address = port.getHost()
        if not _is_local(address) and not self._allow_public:
            await port.stopListening()
            await self.client.stop()
            raise ConfigError(f"the local API would listen on {address.host}, not loopback;"
                              " give --api-public to mean it")
        self._port = port
        if isinstance(address, UNIXAddress):
            self.url = f"unix:{address.name.decode() if isinstance(address.name, bytes) else address.name}"
        else:
            host = f"[{address.host}]" if ":" in address.host else address.host
            self.url = f"ws://{host}:{address.port}"
        if self._data_dir is not None:
            path = os.path.join(self._data_dir, API_FILE)
            with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
                json.dump({"url": self.url, "pid": os.getpid(), "address": str(self.client.address)}, f)
        self.log.info("Local API on {url} for {address}", url=self.url, address=str(self.client.address))

    async def stop(self):
        """
        Stop serving, close the applications' connections, stop the client.

        :returns: the bytes of messages that no application took, for the
            caller to keep.
        """
        if self._data_dir is not None:
            try:
                os.unlink(os.path.join(self._data_dir, API_FILE))
            except FileNotFoundError:
                pass
        if self._port is not None:
            await self._port.stopListening()
            self._port = None
        for app in list(self._apps):
            app.dropConnection(abort=True)
        if self._reading is not None:
            self._reading.cancel()
            self._reading = None
        await self.client.stop()
        left = [m.data for m in self._buffer] + [m.data for m in self.client.inbox.pending]
        self._buffer.clear()
        return left

    # -- received messages ----------------------------------------------------

    def _read_next(self):
        self._reading = self.client.inbox.get()
        self._reading.addCallbacks(self._received, self._reading_failed)

    def _reading_failed(self, failure):
        if not failure.check(CancelledError):  # cancelled: the daemon stops
            self.log.failure("handing a received message on failed", failure)

    def _received(self, message):
        self._reading = None
        if any(app.receives for app in self._apps):
            self._hand_over(message)
        else:
            self._buffer.append(message)
            if len(self._buffer) >= MAX_BUFFERED and not self.client.pulls_held:
                self.client.pulls_held = True
                self.log.warn("{count} received messages wait for an application; pulls wait too",
                              count=len(self._buffer))
        self._read_next()

    def _hand_over(self, message):
        tag = None
        if message.surbs:
            tag = secrets.token_hex(16)
            self._tags[tag] = message
            if len(self._tags) > MAX_SENDER_TAGS:
                self._tags.popitem(last=False)
        event = {"type": "received", **message_json(message.data), "senderTag": tag,
                 "isReply": message.is_reply}
        for app in list(self._apps):
            if app.receives:
                app.send_json(event)
        self.counters.incr("api.received")

    def attach(self, app):
        """An application connected: hand it what waited."""
        self._apps.add(app)
        while app.receives and self._buffer:
            self._hand_over(self._buffer.popleft())
        if app.receives:
            self.client.pulls_held = False

    def detach(self, app):
        """An application went away."""
        self._apps.discard(app)

    # -- requests -------------------------------------------------------------

    def handle(self, request, app):
        """
        :returns: the response (a dict, or a Deferred of one).
        :raises LocalApiError: for a request it refuses.
        """
        handler = self._handlers.get(request["type"])
        if handler is None:
            raise LocalApiError("unknown_type", f"unknown request type {request['type']!r}")
        self.counters.incr("api.requests", request["type"])
        return handler(request)

    def _self_address(self, request):
        return {"type": "selfAddress", "address": str(self.client.address)}

    def _stats(self, request):
        return {"type": "stats", "stats": self.client.stats()}

    def _wait(self):
        return self.client.stream.stats()["waiting_senders"] < MAX_WAITING_SENDS

    def _acknowledged(self, d, request):
        answer = {"type": "acknowledged"}
        if "id" in request:
            answer["id"] = request["id"]
        return d.addCallback(lambda _: answer)

    def _send(self, request):
        recipient = request.get("recipient")
        if not isinstance(recipient, str):
            raise LocalApiError("missing_field", "recipient (a client address) is needed")
        try:
            recipient = ClientAddress.parse(recipient)
        except InvalidClientAddress as e:
            raise LocalApiError("invalid_address", str(e)) from None
        data = message_field(request)
        surbs = _int_field(request, "replySurbs", 1 if request.get("withReplySurb") is True else 0, 0, 255)
        return self._acknowledged(self.client.send(recipient, data, surbs, wait=self._wait()), request)

    def _reply(self, request):
        tag = request.get("senderTag")
        if not isinstance(tag, str):
            raise LocalApiError("missing_field", "senderTag (from a received message) is needed")
        message = self._tags.get(tag)
        if message is None:
            raise LocalApiError("unknown_sender_tag", "no received message with SURBs has this tag")
        data = message_field(request)
        return self._acknowledged(self.client.reply(message, data, wait=self._wait()), request)
