"""
A node's side of the directory: it signs its descriptor and POSTs it, now
and then again every interval, so that it stays listed.
"""

from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from nymprov.netdoc.descriptor import MAX_DESCRIPTOR_BYTES, sign_descriptor
from nymprov.netdoc.fetch import refusal_of
from nymprov.netdoc.http import request


class DescriptorPublisher:
    """
    :param agent: a ``twisted.web.client.Agent``.
    :param str url: the directory's base URL.
    :param describe: ``describe(timestamp)`` returns this node's
        :class:`nymprov.netdoc.Descriptor` as of now (its keys change with
        the epochs).
    :param identity_key: the node's ``nacl.signing.SigningKey``.
    :param clock: an ``IReactorTime``.
    :param float interval: seconds between publications.
    :param counters: a :class:`nymprov.metrics.Counters`: counted as
        ``directory.published`` and ``directory.publish_refused.REASON``.
    """

    log = Logger()

    def __init__(self, agent, url, describe, identity_key, clock, interval, counters):
        self._agent = agent
        self._url = url.rstrip("/") + "/v1/descriptors"
        self._describe = describe
        self._identity_key = identity_key
        self._clock = clock
        self._interval = interval
        self._counters = counters
        self._last_timestamp = -1
        self._last_reason = None
        self._loop = None
        self._in_flight = None

    def publish(self):
        """
        Sign and POST the descriptor once.

        :returns: a Deferred firing with ``True`` if accepted, ``False`` if
            refused or unreachable (counted and logged; never fails).
        """
        # Strictly increasing: the directory refuses a timestamp it has seen.
        timestamp = max(int(self._clock.seconds()), self._last_timestamp + 1)
        self._last_timestamp = timestamp
        contents = sign_descriptor(self._describe(timestamp), self._identity_key)
        d = request(self._agent, b"POST", self._url, contents, max_bytes=MAX_DESCRIPTOR_BYTES)
        d.addCallbacks(self._answered, self._unreachable)
        self._in_flight = d
        return d

    def _answered(self, answer):
        status, body = answer
        if status == 200:
            self._counters.incr("directory.published")
            if self._last_reason is not None:
                self.log.info("the directory accepts our descriptor again")
            self._last_reason = None
            return True
        return self._refused(refusal_of(status, body).reason, body[:200])

    def _unreachable(self, failure):
        return self._refused("unreachable", failure.getErrorMessage())

    def _refused(self, reason, detail):
        self._counters.incr("directory.publish_refused", reason)
        if reason != self._last_reason:
            # Once per change, not once per interval.
            self.log.warn("the directory refused our descriptor: {reason} ({detail})", reason=reason, detail=detail)
        self._last_reason = reason
        return False

    def start(self):
        """Publish now and every interval until :meth:`stop`."""
        self._loop = LoopingCall(self.publish)
        self._loop.clock = self._clock
        self._loop.start(self._interval, now=True)

    def stop(self):
        """Stop publishing; the Deferred fires once no POST is in flight."""
        from twisted.internet.defer import succeed

        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        in_flight, self._in_flight = self._in_flight, None
        if in_flight is None or in_flight.called:
            return succeed(None)
        return in_flight.addBoth(lambda _: None)
