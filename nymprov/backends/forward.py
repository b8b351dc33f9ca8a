"""
The forward backend: posts each payload to one configured URL, at least
once, keeping it in a durable queue until the target answers 2xx.

A message is accepted (``deliver`` fires) once it is committed to the
queue's SQLite file; it is then posted, and retried with exponential
back-off until a 2xx answer, across restarts.  If the request carried a
SURB, the target's status goes back through it.  The queue is
:mod:`nymprov.backends.durablequeue`.
"""

import struct
from io import BytesIO

from twisted.internet.defer import CancelledError, Deferred, inlineCallbacks
from twisted.internet.protocol import Protocol
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool
from twisted.web.http_headers import Headers
from zope.interface import implementer

from nymprov.backends.durablequeue import DurableQueue, QueuedBackend, Retry, backoff
from nymprov.interfaces import IProvider

__all__ = ["QUEUE_FILE", "ForwardProvider", "backoff", "decode_status", "encode_status"]

QUEUE_FILE = "forward.sqlite"

_STATUS = struct.Struct(">H")


def encode_status(status, phrase=b""):
    """:returns: the status reply: the HTTP status and its phrase."""
    return _STATUS.pack(status) + phrase[:200]


def decode_status(data):
    """
    :returns: ``(status, phrase)``.
    :raises ValueError: if ``data`` is too short.
    """
    if len(data) < _STATUS.size:
        raise ValueError("status reply too short")
    return _STATUS.unpack_from(data)[0], bytes(data[_STATUS.size :])


class _Discard(Protocol):
    """Reads a response body to its end and throws it away."""

    def __init__(self, finished):
        self._finished = finished

    def connectionLost(self, reason):
        self._finished.callback(None)


@implementer(IProvider)
class ForwardProvider(QueuedBackend):
    """
    The durable forwarding queue.

    :param sender: the ``IMixSender`` for status replies.
    :param topology: the ``ITopology`` SURB first hops are checked in.
    :param reactor: the reactor (time, threads, TCP).
    :param str url: where payloads are posted.
    :param str path: the queue's SQLite file.
    """

    name = "forward"

    def __init__(self, sender, topology, reactor, *, url, path, content_type=b"application/octet-stream",
                 timeout=10.0, retry_first=1.0, retry_max=300.0, max_queue=10000, max_parallel=4,
                 agent=None):
        QueuedBackend.__init__(self, sender, topology, reactor)
        self._url = url.encode("ascii")
        self._content_type = content_type
        self._timeout = timeout
        self._http_pool = HTTPConnectionPool(reactor, persistent=False)
        self._agent = agent or Agent(reactor, connectTimeout=timeout, pool=self._http_pool)
        self.queue = DurableQueue(
            reactor, path, "forward_queue", self._post, self.answer, name="forward",
            retry_first=retry_first, retry_max=retry_max, max_queue=max_queue, max_parallel=max_parallel,
        )

    @inlineCallbacks
    def stopService(self):
        """Stop posting; unfinished payloads stay queued for the next start."""
        yield QueuedBackend.stopService(self)
        yield self._http_pool.closeCachedConnections()

    @inlineCallbacks
    def _post(self, item):
        headers = Headers({b"content-type": [self._content_type]})
        d = self._agent.request(b"POST", self._url, headers, FileBodyProducer(BytesIO(item.payload)))
        d.addTimeout(self._timeout, self._reactor)
        try:
            response = yield d
            finished = Deferred()
            response.deliverBody(_Discard(finished))
            yield finished.addTimeout(self._timeout, self._reactor)
        except CancelledError:
            raise  # stopping: the row stays as it was, due at the next start
        except Exception as e:
            raise Retry(type(e).__name__)
        if not 200 <= response.code < 300:
            raise Retry(f"status {response.code}")
        self.log.debug("forward: posted after {attempts} failures", attempts=item.attempts)
        return encode_status(response.code, response.phrase)
