"""
Handing a raw transaction to a chain's node, and reading its verdict:

- Ethereum JSON-RPC 2.0 ``eth_sendRawTransaction`` (``0x`` hex);
- Bitcoin Core JSON-RPC ``sendrawtransaction`` (hex), basic auth from a
  user:password file or Core's cookie file;
- an Esplora-style REST ``POST {base}/tx`` (hex body, the txid back).

Each call ends in a :class:`Verdict` (the node took it, already had it,
or refused it for good) or raises :class:`Transient` (try again later).
Credentials are read from files and never logged.
"""

import base64
import json
import os
import re
import stat
from io import BytesIO

from twisted.internet.defer import CancelledError, Deferred, inlineCallbacks
from twisted.internet.protocol import Protocol
from twisted.web.client import FileBodyProducer, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers

from nymprov.errors import ConfigError

#: A node's own message goes back to the sender cut to this many bytes.
MESSAGE_LIMIT = 200
#: Answers longer than this are not read to their end.
BODY_LIMIT = 64 * 1024

BROADCAST, KNOWN, REJECTED = "broadcast", "known", "rejected"


class Transient(Exception):
    """The node could not be asked or could not answer now; ``str()`` says why."""


class Verdict:
    """
    :ivar str outcome: ``broadcast`` (taken now), ``known`` (the node
        already has it, in its pool or in the chain) or ``rejected``.
    :ivar str message: the node's words (``txid`` it reported when taken),
        at most ``MESSAGE_LIMIT`` bytes of printable text.
    """

    __slots__ = ("outcome", "message")

    def __init__(self, outcome, message=""):
        self.outcome = outcome
        self.message = safe_text(message)

    def __repr__(self):
        return f"Verdict({self.outcome!r}, {self.message!r})"

    def __eq__(self, other):
        return isinstance(other, Verdict) and (self.outcome, self.message) == (other.outcome, other.message)


def safe_text(text):
    """:returns: ``text`` printable, one line, at most ``MESSAGE_LIMIT`` UTF-8 bytes."""
    text = re.sub(r"[^\x20-\x7e]", "?", str(text))
    return text.encode("ascii")[:MESSAGE_LIMIT].decode("ascii")


# -- credentials -----------------------------------------------------------------


def read_secret_file(path, allow_group=False):
    """
    :returns: the file's text, stripped.
    :raises ConfigError: if it is missing, empty, or readable by others
        (or the group, unless ``allow_group``).
    """
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
        with open(path, encoding="utf-8") as f:
            text = f.read().strip()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: {e.strerror if isinstance(e, OSError) else e}") from None
    forbidden = 0o007 if allow_group else 0o077
    if mode & forbidden:
        needed = "0640 or stricter" if allow_group else "0600"
        raise ConfigError(f"{path}: mode {mode:04o} lets others read a secret; make it {needed}")
    if ":" not in text:
        raise ConfigError(f"{path}: expected one line USER:PASSWORD")
    return text


class BasicAuth:
    """
    Basic authentication from a ``user:password`` file (mode 0600), read
    once, or from Bitcoin Core's cookie file, read at each call (Core
    writes a new one at each start; its ``-rpccookieperms=group`` makes it 0640).
    """

    def __init__(self, auth_file=None, cookie_file=None):
        self._cookie_file = cookie_file
        self._fixed = None
        if auth_file:
            self._fixed = self._header(read_secret_file(auth_file))
        elif cookie_file:
            read_secret_file(cookie_file, allow_group=True)  # checked now, read per call

    @staticmethod
    def _header(text):
        return b"Basic " + base64.b64encode(text.encode("utf-8"))

    def header(self):
        """:returns: the ``Authorization`` value, or ``None`` for none."""
        if self._fixed is not None:
            return self._fixed
        if self._cookie_file:
            try:
                return self._header(read_secret_file(self._cookie_file, allow_group=True))
            except ConfigError as e:
                raise Transient(f"cookie file: {e}")
        return None

    def __repr__(self):
        return "BasicAuth(<hidden>)"


# -- HTTP ------------------------------------------------------------------------


class _BoundedBody(Protocol):
    def __init__(self, finished, limit):
        self._finished = finished
        self._limit = limit
        self._parts = []
        self._size = 0

    def dataReceived(self, data):
        self._size += len(data)
        if self._size > self._limit:
            self.transport.stopProducing()
            return
        self._parts.append(data)

    def connectionLost(self, reason):
        if self._size > self._limit:
            self._finished.errback(Transient(f"answer longer than {self._limit} bytes"))
        elif reason.check(ResponseDone, PotentialDataLoss):
            self._finished.callback(b"".join(self._parts))
        else:
            self._finished.errback(reason)


@inlineCallbacks
def post(agent, reactor, url, body, content_type, timeout, auth=None):
    """
    POST ``body`` to ``url``.

    :returns: ``(status, body)``, the body cut at ``BODY_LIMIT``.
    :raises Transient: if no answer came (refused, reset, timeout).
    """
    headers = Headers({b"content-type": [content_type]})
    value = auth.header() if auth is not None else None
    if value is not None:
        headers.addRawHeader(b"authorization", value)
    try:
        d = agent.request(b"POST", url.encode("ascii"), headers, FileBodyProducer(BytesIO(body)))
        response = yield d.addTimeout(timeout, reactor)
        finished = Deferred()
        response.deliverBody(_BoundedBody(finished, BODY_LIMIT))
        data = yield finished.addTimeout(timeout, reactor)
    except (CancelledError, Transient):
        raise
    except Exception as e:
        raise Transient(type(e).__name__)
    return response.code, data


def _json_rpc_error(data):
    """:returns: ``(code, message)`` of a JSON-RPC error answer, or ``None``."""
    try:
        answer = json.loads(data)
    except ValueError:
        return None
    error = answer.get("error") if isinstance(answer, dict) else None
    if not isinstance(error, dict):
        return None
    code = error.get("code")
    return (code if isinstance(code, int) else None), str(error.get("message", ""))


def _json_rpc_result(status, data):
    if not 200 <= status < 300:
        raise Transient(f"status {status}")
    try:
        result = json.loads(data)["result"]
    except (ValueError, KeyError, TypeError):
        raise Transient("an answer that is not JSON-RPC")
    return Verdict(BROADCAST, result if isinstance(result, str) else "")


# -- Ethereum --------------------------------------------------------------------

#: Words of nodes (geth, anvil, Nethermind, Besu) that mean "I have it already".
_ETH_KNOWN = re.compile(r"already known|known transaction|already imported|alreadyknown|already in (the )?pool",
                        re.IGNORECASE)
#: ... and that mean "not now": a full pool, a rate limit.
_ETH_BUSY = re.compile(r"txpool is full|pool is full|too many|rate limit|try again|temporarily|busy",
                       re.IGNORECASE)
#: JSON-RPC codes for "limit exceeded" (EIP-1474) and "internal error".
_ETH_TRANSIENT_CODES = {-32005, -32603}


def ethereum_verdict(status, data):
    """
    :returns: the :class:`Verdict` of an ``eth_sendRawTransaction`` answer.
    :raises Transient: for a busy or failing node.
    """
    if status in (401, 403, 407, 429) or status >= 500:
        # About the endpoint (credentials, quota, an outage), whatever the
        # body says: never a verdict on the transaction.
        raise Transient(f"status {status}")
    error = _json_rpc_error(data)
    if error is None:
        return _json_rpc_result(status, data)
    code, message = error
    if code in _ETH_TRANSIENT_CODES or _ETH_BUSY.search(message):
        raise Transient(f"node busy ({code})")
    if _ETH_KNOWN.search(message):
        return Verdict(KNOWN, message)
    # Every other answer of a node about a transaction (nonce too low,
    # underpriced, insufficient funds, invalid sender...) is final.
    return Verdict(REJECTED, message)


class EthereumNode:
    """Sends with ``eth_sendRawTransaction``."""

    content_type = b"application/json"

    def __init__(self, agent, reactor, timeout=10.0, auth=None):
        self._agent, self._reactor, self._timeout, self._auth = agent, reactor, timeout, auth
        self._ids = 0

    @inlineCallbacks
    def send(self, url, raw):
        """:returns: (a Deferred of) the node's :class:`Verdict` on ``raw``."""
        self._ids += 1
        request = {"jsonrpc": "2.0", "id": self._ids, "method": "eth_sendRawTransaction",
                   "params": ["0x" + bytes(raw).hex()]}
        status, data = yield post(self._agent, self._reactor, url, json.dumps(request).encode(),
                                  self.content_type, self._timeout, self._auth)
        return ethereum_verdict(status, data)


# -- Bitcoin ---------------------------------------------------------------------

#: Bitcoin Core's error codes (src/rpc/protocol.h) that settle a transaction:
#: RPC_DESERIALIZATION_ERROR, RPC_INVALID_PARAMETER, RPC_VERIFY_ERROR
#: (e.g. missing or spent inputs, fee above maxfeerate), RPC_VERIFY_REJECTED
#: (policy or consensus), RPC_TYPE_ERROR.
CORE_REJECTED = {-22, -8, -25, -26, -3}
#: RPC_VERIFY_ALREADY_IN_CHAIN.
CORE_KNOWN = {-27}
# Every other code (RPC_IN_WARMUP -28, RPC_CLIENT_NOT_CONNECTED -9,
# RPC_CLIENT_IN_INITIAL_DOWNLOAD -10, RPC_CLIENT_P2P_DISABLED -31, -1 ...)
# is about the node, not the transaction: tried again later.


def bitcoin_core_verdict(status, data):
    """
    :returns: the :class:`Verdict` of a ``sendrawtransaction`` answer.
        Core answers a JSON-RPC 1.0 error with HTTP 500 (404 for an unknown
        method) and a JSON body, 401 with no body for bad credentials.
    :raises Transient: for anything that is about the node.
    """
    error = _json_rpc_error(data)
    if error is None:
        return _json_rpc_result(status, data)
    code, message = error
    if code in CORE_KNOWN or (code in CORE_REJECTED and "already" in message.lower()):
        return Verdict(KNOWN, message)
    if code in CORE_REJECTED:
        return Verdict(REJECTED, message)
    raise Transient(f"node error {code}")


class BitcoinCoreNode:
    """Sends with Bitcoin Core's ``sendrawtransaction``."""

    # As in Core's own documentation of its RPC (curl examples).
    content_type = b"text/plain"

    def __init__(self, agent, reactor, timeout=10.0, auth=None):
        self._agent, self._reactor, self._timeout, self._auth = agent, reactor, timeout, auth
        self._ids = 0

    @inlineCallbacks
    def send(self, url, raw):
        """:returns: (a Deferred of) the node's :class:`Verdict` on ``raw``."""
        self._ids += 1
        request = {"jsonrpc": "1.0", "id": str(self._ids), "method": "sendrawtransaction",
                   "params": [bytes(raw).hex()]}
        status, data = yield post(self._agent, self._reactor, url, json.dumps(request).encode(),
                                  self.content_type, self._timeout, self._auth)
        return bitcoin_core_verdict(status, data)


def esplora_verdict(status, data):
    """
    :returns: the :class:`Verdict` of an Esplora ``POST /tx``: 200 and the
        txid, or 400 and the backing node's error text.
    :raises Transient: for 5xx, 429 and anything unexpected.
    """
    text = data.decode("utf-8", "replace").strip()
    if 200 <= status < 300:
        return Verdict(BROADCAST, text)
    if status != 400:
        raise Transient(f"status {status}")
    # Esplora passes Core's error on: "sendrawtransaction RPC error: {json}".
    try:
        embedded = json.loads(text[text.index("{"):])
    except ValueError:
        embedded = None
    if isinstance(embedded, dict) and isinstance(embedded.get("code"), int):
        error = {"result": None, "error": {"code": embedded["code"], "message": str(embedded.get("message", ""))}}
        return bitcoin_core_verdict(500, json.dumps(error).encode())
    return Verdict(REJECTED, text)


class EsploraNode:
    """Sends with an Esplora-style ``POST {base}/tx``."""

    content_type = b"text/plain"

    def __init__(self, agent, reactor, timeout=10.0, auth=None):
        self._agent, self._reactor, self._timeout, self._auth = agent, reactor, timeout, auth

    @inlineCallbacks
    def send(self, url, raw):
        """:returns: (a Deferred of) the :class:`Verdict` on ``raw``."""
        status, data = yield post(self._agent, self._reactor, url.rstrip("/") + "/tx",
                                  bytes(raw).hex().encode(), self.content_type, self._timeout, self._auth)
        return esplora_verdict(status, data)


NODES = {"ethereum": EthereumNode, "core": BitcoinCoreNode, "esplora": EsploraNode}
