"""
The client: register with its provider, send messages reliably through the
mixnet in one shaped outgoing stream (``nymprov.client.stream``), receive
them by pulling on a fixed schedule, and reply through SURBs.
"""

import random

from twisted.internet.defer import Deferred, DeferredList, DeferredQueue, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from nymprov.client.acks import Acknowledgements, Outgoing
from nymprov.client.cover import CoverBuilder
from nymprov.wire.fragments import Fragment, MalformedFragment, Reassembler, split_message
from nymprov.client.identity import ClientAddress, load_token, save_token
from nymprov.client.routes import Router
from nymprov.client.sealing import (
    ACK_ID_LENGTH,
    CHUNK_SIZE,
    HINT_LENGTH,
    KIND_COVER,
    KIND_MESSAGE,
    KIND_REPLY,
    Record,
    UnreadableBody,
    open_body,
    reply_private_key,
    seal,
)
from nymprov.client.received import ReceivedMessage
from nymprov.client.stream import (
    DEFAULT_DROP_RATE,
    DEFAULT_LOOP_RATE,
    DEFAULT_QUEUE_CAPACITY,
    DEFAULT_SEND_RATE,
    OutgoingStream,
    pull_interval_keeping_up,
)
from nymprov.metrics import Counters
from nymprov.sphinx import SURB
from nymprov.wire import clientapi as api
from nymprov.wire.envelope import MalformedEnvelope, decode_envelope, encode_envelope

#: Most messages one PULL asks for (the provider's default ``pull_max``).
DEFAULT_PULL_BATCH = 64


class DeliveryFailed(Exception):
    """No ACK came back for a fragment after every attempt."""

    reason = "delivery_failed"


class NotEnoughSurbs(ValueError):
    """A reply needs more SURBs than the message came with."""

    reason = "not_enough_surbs"


class UnknownProvider(ValueError):
    """An address names a provider that the topology does not list."""

    reason = "unknown_provider"


class NoClientApi(ValueError):
    """The client's provider serves no client API (its backend keeps no inbox)."""

    reason = "no_client_api"


class NymClient:
    """
    A mixnet client of one provider.

    :param keys: a :class:`nymprov.client.identity.ClientKeys`.
    :param topology: a :class:`nymprov.topology.Topology`.
    :param provider_identity: its provider's identity (bytes or base58).
    :param connect: ``() -> Deferred[ProviderSession]``; by default a TLS
        connection pinned to the topology's certificate fingerprint.
    :param data_dir: where the access token is kept (0600); ``None`` keeps
        it in memory.
    :param float mean_delay: mean per-hop delay in seconds.
    :param bool loopix: first hop is the own provider (Loopix) instead of a
        first-layer mix (Nym).
    :param float pull_interval: seconds between pulls of the inbox, at most
        (shorter where the client's own traffic coming back needs it).
    :param float ack_timeout: seconds to wait for an ACK before sending the
        fragment again over a fresh route, at least; derived from the delays
        if ``None``.  Longer when the ACKs' measured round trips need it
        (RFC 6298's estimator), so that a slow or loaded network is not sent
        every packet twice.  A fragment is sent again when its timeout
        passes and a fragment sent after it was ACKed, or nothing was sent
        after it; else (ACKs queue: nothing later came back either) after up
        to :data:`~nymprov.client.acks.MAX_ACK_HOLDS` more timeouts.
    :param int max_attempts: sends of one fragment before giving up.
    :param float send_rate: λ_P: packets per second of the payload stream
        (Poisson), real ones when the queue holds some, cover otherwise.
    :param float loop_rate: λ_L: loop cover packets per second beside it.
    :param float drop_rate: λ_D: drop cover packets per second beside it.
    :param str cover: what an empty tick sends: ``"loop"`` or ``"drop"``.
    :param int queue_capacity: packets the outgoing queue holds.
    :param bool shaped: ``False`` sends every packet at once, with no
        payload stream: observable, for tests and benchmarks (logs a warning).
    :param bool pull_pad: ask the provider for padded answers.
    :param bool pull_drain: pull again at once after a full batch (leaks
        that the inbox held more; off by default).
    :param int reply_surbs: SURBs attached to each message by default.
    """

    log = Logger()

    def __init__(self, keys, topology, provider_identity, *, reactor=None, clock=None,
                 connect=None, data_dir=None, mean_delay=0.05, loopix=False, pull_interval=1.0,
                 ack_timeout=None, max_attempts=10, send_rate=DEFAULT_SEND_RATE,
                 loop_rate=DEFAULT_LOOP_RATE, drop_rate=DEFAULT_DROP_RATE, cover="loop",
                 queue_capacity=DEFAULT_QUEUE_CAPACITY, shaped=True, pull_pad=True,
                 pull_drain=False, reply_surbs=0, pull_batch=DEFAULT_PULL_BATCH, rng=None):
        if reactor is None:
            from twisted.internet import reactor
        self.keys = keys
        self.topology = topology
        self.provider = topology.provider(provider_identity)
        self.address = keys.address(self.provider.identity)
        self._reactor = reactor
        self._clock = clock or reactor
        self._connect = connect or self._connect_pinned
        self._data_dir = data_dir
        self._rng = rng or random.SystemRandom()
        self.router = Router(topology, self.provider, mean_delay, loopix, self._rng)
        pull_interval = pull_interval_keeping_up(pull_interval, pull_batch, send_rate, loop_rate,
                                                 drop_rate, cover, shaped)
        self._pull_interval = pull_interval
        if ack_timeout is None:
            # Out and back through every hop with generous room for the
            # exponential tail, plus a pull at each end.
            ack_timeout = 3.0 + 2 * pull_interval + 6 * mean_delay * 2 * self.router.hops
        self._max_attempts = max_attempts
        self._reply_surbs = reply_surbs
        self._pull_batch = pull_batch
        self._pull_pad = pull_pad
        self._pull_drain = pull_drain
        self.counters = Counters()
        self.cover = CoverBuilder(keys, self.router, topology, self.provider, self._rng)
        if cover not in ("loop", "drop"):
            raise ValueError(f"cover must be 'loop' or 'drop', not {cover!r}")
        self.stream = OutgoingStream(
            self._clock, self._rng, self._submit, getattr(self.cover, cover), self.cover.loop,
            self.cover.drop, self.counters, send_rate=send_rate, loop_rate=loop_rate,
            drop_rate=drop_rate, capacity=queue_capacity, shaped=shaped)
        self.reassembler = Reassembler()
        self._stored_handlers = []
        #: Whole messages as they arrive; ``await client.inbox.get()``.
        self.inbox = DeferredQueue()
        self._token = None
        self._session = None
        self._connecting = None
        self.acks = Acknowledgements(
            self._clock, self.counters, ack_timeout,
            # At the front: its message was accepted long ago.
            lambda outgoing: self.stream.put(lambda: self._transmit(outgoing), front=True))
        self._pull_loop = None
        self._running = False
        self.pulls_held = False  # set: scheduled pulls skip (messages wait at the provider)

    # -- connection ---------------------------------------------------------

    def _connect_pinned(self):
        from nymprov.client import session as provider_client

        if self.provider.client_address is None:
            raise NoClientApi(f"provider {self.provider.identity_base58} serves no client API")
        fingerprint = self.provider.certificate_fingerprint if self.provider.client_tls else None
        return Deferred.fromCoroutine(provider_client.connect(
            self._reactor, self.provider.client_host, self.provider.client_port, fingerprint))

    async def _open_session(self):
        session = await self._connect()
        if self._token is None and self._data_dir is not None:
            self._token = load_token(self._data_dir)
        if self._token is not None:
            try:
                await session.authenticate(self.keys.identity_public_bytes, self._token)
                return session
            except api.RemoteError as e:
                if e.code != api.ErrorCode.BAD_TOKEN:
                    raise
        self._token = await session.register(self.keys.identity)
        if self._data_dir is not None:
            save_token(self._data_dir, self._token)
        return session

    def session(self):
        """
        :returns: a Deferred firing with an authenticated session,
            connecting (and registering on first use) if there is none.
        """
        if self._session is not None and not self._session.protocol.closed.called:
            return succeed(self._session)
        connecting = self._connecting
        if connecting is None:
            # Everyone who asks while connecting waits on the same attempt.
            connecting = self._connecting = Deferred.fromCoroutine(self._open_session())

            def done(result):
                self._connecting = None
                if not isinstance(result, Failure):
                    self._session = result
                return result

            connecting.addBoth(done)
        d = Deferred()
        connecting.addBoth(lambda result: (d.callback(result), None)[1])
        return d

    @property
    def running(self):
        """Whether the client is started: its streams and pulls go on."""
        return self._running

    async def start(self):
        """Connect, register (or authenticate), and start the streams and pulls."""
        await self.session()
        self._running = True
        self.stream.start()
        self._pull_loop = LoopingCall(self._pull_tick)
        self._pull_loop.clock = self._clock
        # A fixed cadence whatever the inbox holds: a pull that takes
        # longer than the interval skips a beat instead of piling up.
        self._pull_loop.start(self._pull_interval, now=True)

    def stats(self):
        """:returns: the counters and the outgoing queue's figures, one flat dict."""
        stats = self.counters.snapshot()
        stats.update({f"stream.{k}": v for k, v in self.stream.stats().items()})
        stats["acks.awaited"] = len(self.acks)
        stats["acks.timeout"] = self.ack_timeout
        return stats

    @property
    def ack_timeout(self):
        """Seconds a packet now waits for its ACK before it is sent again."""
        return self.acks.timeout

    async def stop(self):
        """
        Stop the streams and pulls and close the connection.  Sends still
        waiting for their ACKs (or in the queue) are neither retried nor
        failed.
        """
        self._running = False
        self.stream.stop()
        if self._pull_loop is not None and self._pull_loop.running:
            self._pull_loop.stop()
        self.acks.clear()
        if self._connecting is not None:
            try:
                await self._connecting
            except Exception:
                pass
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- sending ------------------------------------------------------------

    def send(self, recipient, data, reply_surbs=None, wait=True):
        """
        Send ``data`` (any length) to ``recipient``, end-to-end encrypted.
        Its packets join the outgoing queue once it has room for them all.

        :param recipient: a :class:`ClientAddress` or its text.
        :param int reply_surbs: SURBs to attach for replies (default: the
            client's ``reply_surbs``).
        :param bool wait: wait for room in the queue; ``False`` fails with
            :class:`nymprov.client.stream.QueueFull` when there is none.
        :returns: a Deferred firing with the message's reply hint (the
            ``in_reply_to`` of its replies) once every fragment is
            acknowledged, or failing with :class:`DeliveryFailed`.
        :raises InvalidClientAddress, UnknownProvider: for a bad recipient.
        :raises MessageTooLong: for more packets than the queue holds.
        """
        if isinstance(recipient, str):
            recipient = ClientAddress.parse(recipient)
        try:
            provider = self.topology.provider(recipient.provider)
        except KeyError:
            raise UnknownProvider(str(recipient)) from None
        count = self._reply_surbs if reply_surbs is None else reply_surbs
        hint = self._rng.randbytes(HINT_LENGTH)
        surbs = tuple(self.router.surb_to_self(self.keys.identity_public_bytes).to_bytes()
                      for _ in range(count))
        reply_public = bytes(reply_private_key(self.keys.encryption, hint).public_key) if count else None
        record = Record(KIND_MESSAGE, bytes(data), surbs, hint if count else None, reply_public)

        def make_packet(envelope):
            return self.router.forward(envelope, recipient.identity, provider)

        d = self._send_record(record, recipient.encryption, self._rng.randbytes(HINT_LENGTH),
                              lambda: make_packet, wait)
        return d.addCallback(lambda _: hint)

    def reply(self, message, data, wait=True):
        """
        Answer ``message`` through the SURBs it came with; each fragment and
        each retransmission uses up one SURB.

        :returns: a Deferred as :meth:`send` (firing with ``None``).
        :raises NotEnoughSurbs: if the reply needs more SURBs than are left.
        """
        surbs = message.surbs if message.surbs is not None else []
        record = Record(KIND_REPLY, bytes(data))
        needed = len(split_message(bytes(16), record.to_bytes(), CHUNK_SIZE))
        if needed > len(surbs):
            raise NotEnoughSurbs(f"needs {needed} SURBs, {len(surbs)} left")

        def next_route():
            if not surbs:
                return None
            surb = SURB.from_bytes(surbs.pop(0))
            return surb.use

        d = self._send_record(record, message.reply_public, message.reply_hint, next_route, wait)
        return d.addCallback(lambda _: None)

    def _send_record(self, record, seal_key, hint, next_route, wait):
        message_id = self._rng.randbytes(16)
        outgoing = [
            Outgoing(fragment.to_bytes(), seal_key, hint, next_route)
            for fragment in split_message(message_id, record.to_bytes(), CHUNK_SIZE)
        ]

        def queue(_):
            for item in outgoing:
                self.stream.put(lambda item=item: self._transmit(item))
            d = DeferredList([item.done for item in outgoing], fireOnOneErrback=True, consumeErrors=True)
            d.addErrback(lambda failure: failure.value.subFailure)
            return d

        return self.stream.reserve(len(outgoing), wait).addCallback(queue)

    def queue_packets(self, builders, wait=True):
        """
        Queue packets for the outgoing stream, each built by its
        ``builder() -> (first_hop, packet)`` when its turn comes (services
        built on the client send this way, so their packets are shaped too).

        :returns: a Deferred firing once they are all queued.
        """
        builders = list(builders)
        d = self.stream.reserve(len(builders), wait)
        d.addCallback(lambda _: [self.stream.put(builder) for builder in builders] and None)
        return d

    def _transmit(self, outgoing):
        """Build the packet of ``outgoing`` as it leaves and start its ACK timer."""
        if outgoing.done.called:
            # A late ACK of an earlier sending came while this one waited,
            # or the send was cancelled.
            self.acks.forget(outgoing)
            return None
        make_packet = outgoing.make_packet()
        if make_packet is None or outgoing.attempts >= self._max_attempts:
            self.acks.forget(outgoing)
            outgoing.done.errback(DeliveryFailed(f"no ACK after {outgoing.attempts} attempts"))
            return None
        outgoing.attempts += 1
        ack_id = self._rng.randbytes(ACK_ID_LENGTH)
        ack_hop, ack_packet = self.router.ack(self.keys.identity_public_bytes, encode_envelope(ack_id))
        body = seal(outgoing.seal_key, outgoing.hint, outgoing.fragment_bytes)
        first_hop, packet = make_packet(encode_envelope(body, ack_hop, ack_packet))
        self.acks.sent(outgoing, ack_id)
        self.counters.incr("packets.sent", "retransmission" if outgoing.attempts > 1 else "first")
        return first_hop, packet

    def _submit(self, first_hop, packet):
        d = self.session()
        d.addCallback(lambda session: session.send(first_hop, packet))
        # A packet the provider refuses, or a dropped connection, is a lost
        # packet like any other: the ACK timer sends it again.
        d.addErrback(self._submit_failed)
        return d

    def _submit_failed(self, failure):
        self.counters.incr("packets.send_failed")
        self.log.debug("sending a packet failed: {error}", error=failure.getErrorMessage())

    # -- receiving ----------------------------------------------------------

    def _pull_tick(self):
        if self.pulls_held:
            self.counters.incr("pulls.held")
            return None
        d = self.pull(self._pull_drain)
        d.addErrback(lambda f: self.log.debug("pull failed: {error}", error=f.getErrorMessage()))
        return d

    def pull(self, drain=True):
        """
        Pull a batch (padded if the client was made so), handle what came,
        ack it; with ``drain``, pull again while batches come back full.

        :returns: a Deferred firing with the number of stored messages handled.
        """
        return Deferred.fromCoroutine(self._pull(drain))

    async def _pull(self, drain):
        handled = 0
        acking = None  # the last batch's ACK, sent beside the next PULL
        try:
            while True:
                session = await self.session()
                batch = await session.pull(self._pull_batch, self._pull_pad)
                self.counters.incr("pulls")
                if acking is not None:
                    # Answers come in request order, so the ACK sent before
                    # this PULL is answered by now; a refusal ends the pull.
                    acked, acking = acking, None
                    await acked
                if not batch.lease_id:
                    return handled
                for stored in batch.messages:
                    self.handle_stored(stored)
                handled += len(batch.messages)
                # A draining client sends the next PULL beside this ACK, not
                # after its answer: a pull skips leased messages, so nothing
                # comes twice, and the inbox is taken at one round trip a
                # batch instead of two.
                acking = session.ack(batch.lease_id)
                if not drain or len(batch.messages) < self._pull_batch:
                    acked, acking = acking, None
                    await acked
                    return handled
        finally:
            if acking is not None:
                # The pull failed first: that is the error to report.
                acking.addErrback(lambda failure: None)

    def add_stored_handler(self, handler):
        """
        Let ``handler(stored) -> bool`` see each pulled message first; a
        message it takes (returns ``True`` for) goes no further.  Services
        built on the client (``nymprov.client.services``) take their
        replies this way.
        """
        self._stored_handlers.append(handler)

    def handle_stored(self, stored):
        """
        Handle one message from the inbox: one a stored handler takes, an
        ACK, a fragment, or neither (counted and dropped).  Never raises for
        bad bytes.
        """
        for handler in self._stored_handlers:
            if handler(stored):
                return
        try:
            body = decode_envelope(stored).body
        except MalformedEnvelope:
            self.counters.incr("received.dropped", "not_envelope")
            return
        if len(body) == ACK_ID_LENGTH:
            self._ack_received(body)
            return
        try:
            fragment_bytes, hint, is_reply = open_body(self.keys.encryption, body)
            fragment = Fragment.from_bytes(fragment_bytes)
            whole = self.reassembler.add(fragment)
            if whole is None:
                return
            record = Record.from_bytes(whole)
        except (UnreadableBody, MalformedFragment) as e:
            self.counters.incr("received.dropped", e.reason)
            return
        if record.kind == KIND_COVER:
            self.counters.incr("cover.received")
            return
        self.counters.incr("messages.received", "reply" if is_reply else "message")
        self.inbox.put(ReceivedMessage(
            record.data, fragment.message_id, is_reply, hint if is_reply else None,
            list(record.surbs), record.reply_hint, record.reply_public,
        ))

    def _ack_received(self, ack_id):
        outgoing = self.acks.received(ack_id)
        if outgoing is not None and not outgoing.done.called:
            outgoing.done.callback(None)
