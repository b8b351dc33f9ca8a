"""
The requester's side of service backends: send a request with reply
blocks to a service provider through a :class:`nymprov.client.NymClient`,
and collect the answer that comes back through them (``fetch(url)`` for
the web proxy).
"""

import os

from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.logger import Logger

from nymprov.backends.broadcast.backend import decode_answer
from nymprov.backends.surbreply import (
    FRAGMENT_HEADER_SIZE,
    MalformedReply,
    decode_fragment,
    encode_service_request,
    new_reply_key,
    open_reply,
    split_fragments,
)
from nymprov.backends.webproxy import ProxyError, decode_reply, encode_http_request
from nymprov.sphinx import PacketSize
from nymprov.wire.envelope import MalformedEnvelope, decode_envelope, encode_envelope
from nymprov.wire.fragments import MalformedFragment, Reassembler

#: Request bytes per regular packet: the envelope's byte and the fragment
#: header come off the plaintext.
REQUEST_CHUNK_SIZE = PacketSize.REGULAR.plaintext - 1 - FRAGMENT_HEADER_SIZE


class ServiceTimeout(Exception):
    """No complete answer came back in time."""


class PayloadTooLarge(ValueError):
    """A payload that a queue-backed service takes only in one packet needs more."""


class _Waiting:
    """One request waiting for its answer."""

    def __init__(self, reply_key):
        self.reply_key = reply_key
        self.done = Deferred()


class ServiceClient:
    """
    Requests to one service provider, over ``client`` (started or not).

    It takes the replies out of the client's inbox before the client sees
    them (``NymClient.add_stored_handler``), and pulls the inbox itself
    while it waits.

    :param client: a :class:`nymprov.client.NymClient`.
    :param service_identity: the service provider's identity (bytes or
        base58); requests are addressed to it.
    :param reactor: the reactor.
    :param float poll_interval: seconds between pulls while waiting.
    """

    log = Logger()

    def __init__(self, client, service_identity, reactor, poll_interval=0.1):
        self._client = client
        self._service = client.topology.provider(service_identity)
        self._reactor = reactor
        self._poll_interval = poll_interval
        self._waiting = {}  # request id -> _Waiting
        # Only fragments of waiting requests are added, so it holds at
        # most one incomplete answer per waiting request.
        self._answers = Reassembler()
        client.add_stored_handler(self._take)

    def _take(self, stored):
        try:
            fragment = decode_fragment(decode_envelope(stored).body, error=MalformedReply)
        except (MalformedEnvelope, MalformedReply):
            return False
        waiting = self._waiting.get(fragment.message_id)
        if waiting is None:
            return False
        try:
            sealed = self._answers.add(fragment)
        except MalformedFragment:
            self.log.debug("service reply fragment disagrees with its siblings; dropped")
            return True
        if sealed is not None:
            del self._waiting[fragment.message_id]
            try:
                waiting.done.callback(open_reply(sealed, waiting.reply_key))
            except MalformedReply as e:
                waiting.done.errback(e)
        return True

    async def _send(self, request_id, body, surbs, reply_key, one_packet=False):
        client = self._client
        blocks = [client.router.surb_to_self(client.keys.identity_public_bytes) for _ in range(surbs)]
        data = encode_service_request(blocks, body, bytes(reply_key.public_key))
        fragments = split_fragments(request_id, data, REQUEST_CHUNK_SIZE)
        if one_packet and len(fragments) > 1:
            room = REQUEST_CHUNK_SIZE - (len(data) - len(body))
            raise PayloadTooLarge(f"{len(body)} bytes do not fit one packet beside {surbs} reply blocks "
                                  f"(at most {room})")

        def builder(fragment):
            return lambda: client.router.forward(encode_envelope(fragment), self._service.identity, self._service)

        # Into the client's outgoing stream like its own packets, so that a
        # request shows on the link as nothing but the stream's ticks.
        await client.queue_packets([builder(f) for f in fragments])
        if not client.running:
            # No stream drains the queue of a client that is not started.
            client.stream.flush_now()

    async def request(self, body, surbs=8, timeout=60.0, one_packet=False):
        """
        Send ``body`` with ``surbs`` reply blocks and wait for the answer.

        :param bool one_packet: refuse to send a request that needs more
            than one packet (``forward`` and ``broadcast`` take only those).
        :returns: the answer's bytes.
        :raises ServiceTimeout: if no complete answer came within ``timeout``.
        :raises PayloadTooLarge: if ``one_packet`` and it does not fit one.
        """
        request_id = os.urandom(16)
        reply_key = new_reply_key()
        waiting = self._waiting[request_id] = _Waiting(reply_key)
        try:
            await self._send(request_id, body, surbs, reply_key, one_packet)
            deadline = self._reactor.seconds() + timeout
            while not waiting.done.called:
                if self._reactor.seconds() > deadline:
                    raise ServiceTimeout(f"no answer within {timeout:g} s")
                if not self._client.running:
                    # A started client pulls on its own schedule; pulling
                    # more often would show when a request is out.
                    await self._client.pull()
                if not waiting.done.called:
                    await deferLater(self._reactor, self._poll_interval, lambda: None)
            return await waiting.done
        finally:
            self._waiting.pop(request_id, None)
            self._answers.forget(request_id)

    async def submit(self, payload):
        """
        Hand ``payload`` to a ``forward`` service provider, without asking
        for its status (use ``request(payload, surbs=1)`` and
        :func:`nymprov.backends.forward.decode_status` for that).  A payload
        must fit one regular packet.

        :returns: once the packet is in the client's outgoing queue (or
            handed to the provider, for a client that is not started).
        :raises PayloadTooLarge: if it does not fit one; nothing is sent then.
        """
        await self._send(os.urandom(16), payload, 0, new_reply_key(), one_packet=True)

    async def broadcast(self, transaction, timeout=180.0):
        """
        Hand a signed transaction (raw bytes) to a ``broadcast`` service
        provider, with one reply block for its answer.  The provider waits
        a random delay before it broadcasts, hence the long ``timeout``.

        :returns: a :class:`nymprov.backends.broadcast.backend.BroadcastAnswer`
            (``outcome``: ``broadcast``, ``duplicate`` or ``rejected``;
            ``txid``; the node's ``message``).
        :raises ServiceTimeout: if no answer came back in time.
        :raises PayloadTooLarge: if it does not fit one packet beside its
            reply block (about 840 bytes); nothing is sent then.
        """
        return decode_answer(await self.request(transaction, surbs=1, timeout=timeout, one_packet=True))

    async def fetch(self, url, method=b"GET", headers=(), body=b"", surbs=32, timeout=60.0):
        """
        Fetch ``url`` through a ``webproxy`` service provider.

        :param headers: ``(name, value)`` byte pairs.
        :param int surbs: reply blocks sent along; the response is cut to
            what they carry (about 2 KB each) and marked ``truncated``.
        :returns: a :class:`nymprov.backends.webproxy.HttpResponse`.
        :raises ProxyError: the proxy's typed refusal or failure
            (``not_allowed``, ``timeout``, ...).
        :raises ServiceTimeout: if no answer came back in time.
        """
        answer = await self.request(encode_http_request(method, url, headers, body), surbs, timeout)
        reply = decode_reply(answer)
        if isinstance(reply, ProxyError):
            raise reply
        return reply
