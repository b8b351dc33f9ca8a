"""The client side of the client API: requests sent, answers matched to them."""

from collections import OrderedDict
from dataclasses import replace

from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionClosed
from twisted.logger import Logger
from twisted.protocols.basic import Int32StringReceiver
from twisted.python.failure import Failure

from nymprov.net.transport import no_delay
from nymprov.wire import clientapi as api
from nymprov.wire.clientapi import ClientApiError


class ClientApiClientProtocol(Int32StringReceiver):
    """
    The client side: ``request(message)`` sends a request and returns a
    Deferred of its response.

    Requests may be pipelined; the provider answers in order.  An ERROR
    answer fails the Deferred with ``RemoteError``; a lost connection or a
    broken answer fails every pending request.
    """

    log = Logger()
    MAX_LENGTH = api.MAX_RESPONSE_FRAME

    def __init__(self):
        self._pending = OrderedDict()  # request_id -> (expected type, Deferred)
        self._next_id = 1
        self._failure = None

    def connectionMade(self):
        no_delay(self.transport)

    def request(self, message):
        """
        Send ``message`` (its ``request_id`` is replaced by a fresh one).

        :returns: a Deferred firing with the response, or failing with
            ``RemoteError``, ``ClientApiError`` or the connection's loss.
        """
        if self._failure is not None:
            return fail(self._failure)
        if self.transport is None:
            return fail(ConnectionClosed("not connected"))
        request_id = self._next_id
        # Ids run 1..2**32-1; 0 is the id of answers to unparseable frames.
        self._next_id = request_id % 0xFFFFFFFF + 1
        message = replace(message, request_id=request_id)
        d = Deferred()
        self._pending[request_id] = (api.EXPECTED_RESPONSE[type(message)], d)
        self.transport.write(api.encode(message))
        return d

    def stringReceived(self, frame):
        try:
            response = api.decode_response(frame)
        except ClientApiError as e:
            self._broken(e)
            return
        if isinstance(response, api.Error) and response.request_id == 0:
            # The provider closes: it could not parse a frame of ours, or
            # this session was revoked.
            self._broken(response.as_exception())
            return
        if not self._pending:
            self._broken(api.MalformedResponse("answer to no request", response.request_id))
            return
        oldest = next(iter(self._pending))
        if response.request_id != oldest:
            self._broken(api.MalformedResponse("answer out of order", response.request_id))
            return
        expected, d = self._pending.pop(oldest)
        if isinstance(response, api.Error):
            d.errback(response.as_exception())
        elif not isinstance(response, expected):
            error = api.MalformedResponse(f"unexpected {response.NAME}", oldest)
            d.errback(error)
            self._broken(error)
        else:
            d.callback(response)

    def lengthLimitExceeded(self, length):
        self._fail_all(Failure(api.FrameTooLarge(f"answer of {length} bytes")))
        self.transport.abortConnection()

    def _broken(self, error):
        self.log.warn("broken provider answer: {why}", why=str(error))
        self._fail_all(Failure(error))
        self.transport.loseConnection()

    def _fail_all(self, failure):
        if self._failure is None:
            self._failure = failure
        pending, self._pending = self._pending, OrderedDict()
        for _, d in pending.values():
            d.errback(failure)

    def connectionLost(self, reason):
        self._fail_all(reason)
