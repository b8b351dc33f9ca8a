"""
One HTTP request to the directory, with the answer's body read up to a
bound, so that a broken or hostile server cannot grow our memory.
"""

from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import Protocol
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from nymprov.netdoc.errors import TooLarge


@implementer(IBodyProducer)
class _Body:
    def __init__(self, data):
        self._data = data
        self.length = len(data)

    def startProducing(self, consumer):
        consumer.write(self._data)
        return succeed(None)

    def pauseProducing(self):
        pass

    def resumeProducing(self):
        pass

    def stopProducing(self):
        pass


class _BoundedReader(Protocol):
    def __init__(self, finished, max_bytes):
        self._finished = finished
        self._max = max_bytes
        self._parts = []
        self._size = 0

    def dataReceived(self, data):
        if self._finished is None:
            return
        self._size += len(data)
        if self._size > self._max:
            finished, self._finished = self._finished, None
            self.transport.stopProducing()
            finished.errback(TooLarge(f"answer larger than {self._max} bytes"))
            return
        self._parts.append(data)

    def connectionLost(self, reason):
        if self._finished is None:
            return
        finished, self._finished = self._finished, None
        if reason.check(ResponseDone, PotentialDataLoss):
            finished.callback(b"".join(self._parts))
        else:
            finished.errback(reason)


def make_agent(reactor):
    """
    :returns: an ``Agent`` whose connections close after each answer: a
        node speaks to the directory every few seconds at most, and a kept
        connection would outlive a stop.
    """
    pool = HTTPConnectionPool(reactor, persistent=False)
    agent = Agent(reactor, pool=pool)
    # Kept for closing at stop (Agent has no public accessor for it).
    agent.connection_pool = pool
    return agent


def request(agent, method, url, body=None, max_bytes=16 * 1024 * 1024):
    """
    :param bytes method: ``b"GET"`` or ``b"POST"``.
    :param str url: the full URL.
    :param body: bytes to POST (as JSON), or ``None``.
    :returns: a Deferred firing with ``(status, body bytes)``.
    """
    headers = Headers({b"content-type": [b"application/json"]}) if body is not None else None
    d = agent.request(method, url.encode("ascii"), headers, _Body(body) if body is not None else None)

    def read(response):
        finished = Deferred()
        response.deliverBody(_BoundedReader(finished, max_bytes))
        return finished.addCallback(lambda data: (response.code, data))

    return d.addCallback(read)
