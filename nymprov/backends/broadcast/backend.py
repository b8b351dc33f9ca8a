"""
The broadcaster: a signed transaction arrives through the mixnet, is
checked to be one transaction of the configured chain, committed to a
durable queue (only then is the message taken), and handed to one of the
configured nodes after a random delay, once per txid within a window.
The outcome goes back through the request's SURB, if it carried one.

The answer is ``outcome u8 | txid [32] | message (u16 length, UTF-8)``:
outcome 0 broadcast, 1 duplicate (seen within the window, or the node
already had it), 2 rejected (the node's reason in ``message``).
"""

import random
import struct
from collections import Counter

from twisted.internet.defer import inlineCallbacks
from twisted.logger import Logger
from twisted.web.client import Agent, HTTPConnectionPool
from zope.interface import implementer

from nymprov.backends.broadcast import bitcoin, ethereum, rpc
from nymprov.backends.broadcast.errors import UnsupportedTransaction
from nymprov.backends.durablequeue import DurableQueue, QueuedBackend, Retry
from nymprov.backends.surbreply import send_reply
from nymprov.interfaces import IProvider

QUEUE_FILE = "broadcast.sqlite"

BROADCAST, DUPLICATE, REJECTED = 0, 1, 2
OUTCOMES = {BROADCAST: "broadcast", DUPLICATE: "duplicate", REJECTED: "rejected"}
_VERDICT_OUTCOMES = {rpc.BROADCAST: BROADCAST, rpc.KNOWN: DUPLICATE, rpc.REJECTED: REJECTED}

_ANSWER = struct.Struct(">B32sH")

#: Parsers by chain, and their size limits.
CHAINS = {"ethereum": ethereum, "bitcoin": bitcoin}

# Txids seen within the duplicate window; pruned as new ones come.
_SEEN_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS broadcast_seen (txid BLOB PRIMARY KEY, seen_at REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS broadcast_seen_at ON broadcast_seen (seen_at)",
)


class MalformedAnswer(ValueError):
    """A broadcaster's answer (on the requester's side) cannot be decoded."""


class BroadcastAnswer:
    """What became of a transaction: ``outcome`` (a name), ``txid`` (bytes), ``message``."""

    __slots__ = ("outcome", "txid", "message")

    def __init__(self, outcome, txid, message=""):
        self.outcome = outcome
        self.txid = txid
        self.message = message

    def __repr__(self):
        return f"BroadcastAnswer({self.outcome!r}, {self.txid.hex()}, {self.message!r})"


def encode_answer(outcome, txid, message=""):
    """:returns: the answer's bytes (``outcome`` one of the codes above)."""
    text = rpc.safe_text(message).encode("ascii")
    return _ANSWER.pack(outcome, txid, len(text)) + text


def decode_answer(data):
    """
    :returns: a :class:`BroadcastAnswer`.
    :raises MalformedAnswer: if ``data`` is not one.
    """
    if len(data) < _ANSWER.size:
        raise MalformedAnswer("shorter than an answer")
    outcome, txid, length = _ANSWER.unpack_from(data)
    message = bytes(data[_ANSWER.size :])
    if outcome not in OUTCOMES or len(message) != length:
        raise MalformedAnswer("not a broadcast answer")
    return BroadcastAnswer(OUTCOMES[outcome], txid, message.decode("utf-8", "replace"))


def parse_delay(text):
    """
    :param text: ``SECONDS`` (fixed), ``exp:MEAN[:MAX]`` (exponential,
        cut at MAX) or ``uniform:LOW:HIGH``.
    :returns: ``delay(rng) -> seconds``.
    :raises ValueError: for anything else.
    """
    kind, _, rest = str(text).partition(":")
    try:
        numbers = [float(n) for n in (rest.split(":") if rest else [kind])]
    except ValueError:
        raise ValueError(f"delay {text!r}: numbers expected") from None
    if not all(0 <= n < float("inf") for n in numbers):
        raise ValueError(f"delay {text!r}: seconds must be finite and not negative")
    if not rest:
        fixed = numbers[0]
        return lambda rng: fixed
    if kind == "exp" and len(numbers) in (1, 2):
        mean, cap = numbers[0], (numbers[1] if len(numbers) == 2 else numbers[0] * 10)
        return lambda rng: min(cap, rng.expovariate(1.0 / mean)) if mean else 0.0
    if kind == "uniform" and len(numbers) == 2 and numbers[0] <= numbers[1]:
        low, high = numbers
        return lambda rng: rng.uniform(low, high)
    raise ValueError(f"delay {text!r}: use SECONDS, exp:MEAN[:MAX] or uniform:LOW:HIGH")


def _admit(db, txid, now, window):
    """In the queue's transaction: true unless ``txid`` was seen within ``window``."""
    db.execute("DELETE FROM broadcast_seen WHERE seen_at < ?", (now - window,))
    inserted = db.execute("INSERT OR IGNORE INTO broadcast_seen (txid, seen_at) VALUES (?, ?)", (txid, now))
    return inserted.rowcount == 1


@implementer(IProvider)
class BroadcastProvider(QueuedBackend):
    """
    :param str chain: ``ethereum`` or ``bitcoin``.
    :param node: an object with ``send(url, raw) -> Deferred(Verdict)``
        (:mod:`nymprov.backends.broadcast.rpc`); made from ``api`` if ``None``.
    :param list endpoints: node URLs; each broadcast picks one at random.
    :param delay: ``delay(rng) -> seconds`` before each broadcast (:func:`parse_delay`).
    :param float duplicate_window: seconds a txid is remembered.
    :param chain_id: for Ethereum, the only chain id taken (``None``: any).
    """

    name = "broadcast"
    log = Logger()

    def __init__(self, sender, topology, reactor, *, chain, endpoints, path, node=None, api=None, auth=None,
                 delay=None, duplicate_window=86400.0, max_size=None, chain_id=None, timeout=10.0,
                 retry_first=1.0, retry_max=300.0, max_queue=10000, max_parallel=4, rng=None, counters=None):
        QueuedBackend.__init__(self, sender, topology, reactor)
        if chain not in CHAINS:
            raise ValueError(f"chain {chain!r}: one of {', '.join(sorted(CHAINS))}")
        if not endpoints:
            raise ValueError("at least one node endpoint is needed")
        self.chain = chain
        self._parser = CHAINS[chain]
        self._max_size = max_size or self._parser.MAX_SIZE
        self._chain_id = chain_id
        self._endpoints = list(endpoints)
        self._delay = delay or parse_delay("exp:5:60")
        self._window = duplicate_window
        self._rng = rng or random.SystemRandom()
        self._http_pool = None
        if node is None:
            self._http_pool = HTTPConnectionPool(reactor, persistent=False)
            agent = Agent(reactor, connectTimeout=timeout, pool=self._http_pool)
            kind = "ethereum" if chain == "ethereum" else (api or "core")
            node = rpc.NODES[kind](agent, reactor, timeout=timeout, auth=auth)
        self._node = node
        #: What became of the transactions: broadcast, duplicate,
        #: rejected, known (by the node), retried (transient failures);
        #: also in the node's ``counters`` as ``broadcast.transactions``.
        self.outcomes = Counter()
        self._counters = counters
        self.queue = DurableQueue(
            reactor, path, "broadcast_queue", self._broadcast, self.answer, name="broadcast",
            retry_first=retry_first, retry_max=retry_max, max_queue=max_queue, max_parallel=max_parallel,
            schema=_SEEN_SCHEMA,
        )

    @inlineCallbacks
    def stopService(self):
        """Stop broadcasting; queued transactions wait for the next start."""
        yield QueuedBackend.stopService(self)
        if self._http_pool is not None:
            yield self._http_pool.closeCachedConnections()

    def parse(self, payload):
        """
        :returns: the parsed transaction.
        :raises InvalidTransaction: (a subclass, with its reason) if it is
            not one transaction this broadcaster takes.
        """
        tx = self._parser.parse_transaction(payload, self._max_size)
        if self.chain == "bitcoin" and tx.is_coinbase:
            raise UnsupportedTransaction("a coinbase transaction is not broadcast")
        if self._chain_id is not None and self.chain == "ethereum" and tx.chain_id != self._chain_id:
            raise UnsupportedTransaction(f"signed for chain {tx.chain_id}, not {self._chain_id}")
        return tx

    def accept(self, request):
        """Check, then queue unless the txid was seen within the window."""
        tx = self.parse(request.body)
        self.queue.check_room()
        now = self._reactor.seconds()
        d = self.queue.add(request, self._delay(self._rng), lambda db: _admit(db, tx.txid, now, self._window))
        return d.addCallback(self._admitted, request, tx)

    def _admitted(self, row_id, request, tx):
        if row_id is not None:
            self.log.debug("broadcast: queued {txid}", txid=tx.txid.hex())
            return
        self._count("duplicate")
        self.log.debug("broadcast: {txid} seen before; not broadcast again", txid=tx.txid.hex())
        if request.surbs:
            send_reply(self.sender, request, encode_answer(DUPLICATE, tx.txid, "seen before"))

    @inlineCallbacks
    def _broadcast(self, item):
        tx = self._parser.parse_transaction(item.payload, self._max_size)
        url = self._rng.choice(self._endpoints)
        try:
            verdict = yield self._node.send(url, item.payload)
        except rpc.Transient as e:
            self._count("retried")
            raise Retry(str(e))
        outcome = _VERDICT_OUTCOMES[verdict.outcome]
        self._count(verdict.outcome)
        if verdict.outcome == rpc.REJECTED:
            self.log.info("broadcast: the node refused a transaction: {message}", message=verdict.message)
        self.log.debug("broadcast: {txid} {outcome}", txid=tx.txid.hex(), outcome=verdict.outcome)
        reported = verdict.message if outcome != BROADCAST else self._reported_txid(tx, verdict.message)
        return encode_answer(outcome, tx.txid, reported)

    def _count(self, outcome):
        self.outcomes[outcome] += 1
        if self._counters is not None:
            self._counters.incr("broadcast.transactions", outcome)

    def _reported_txid(self, tx, reported):
        ours = tx.txid_hex
        if reported.lower() != ours:
            self.log.warn("broadcast: the node reported another txid than the transaction's own")
        return reported
