"""
What a node or client holds of the network: the last good network document
from a pinned directory, refreshed as epochs pass.  A document that fails
its checks is refused, counted by reason, and changes nothing: the last
good one stays.
"""

import json

from twisted.internet.defer import fail, succeed
from twisted.logger import Logger

from nymprov.netdoc.document import MAX_DOCUMENT_BYTES, verify_document
from nymprov.netdoc.errors import DocumentError
from nymprov.netdoc.http import request


class DirectoryRefused(DocumentError):
    """The directory answered with a typed error (its ``reason``)."""

    def __init__(self, reason, detail=""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def refusal_of(status, body):
    """:returns: the :class:`DirectoryRefused` that an error answer carries."""
    try:
        answer = json.loads(body.decode("utf-8"))
        return DirectoryRefused(str(answer["error"]), str(answer.get("detail", "")))
    except (ValueError, KeyError, TypeError, AttributeError):
        return DirectoryRefused("http_error", f"HTTP {status}")


class DocumentHolder:
    """
    The documents of the current and the next epoch from one directory.

    :param bytes directory_key: the pinned 32-byte Ed25519 key.
    :param counters: a :class:`nymprov.metrics.Counters`; refusals are
        counted as ``directory.document_refused.REASON``.
    """

    log = Logger()

    def __init__(self, directory_key, counters):
        self.directory_key = directory_key
        self._counters = counters
        self._documents = {}  # epoch -> NetworkDocument
        self._listeners = []

    @property
    def latest(self):
        """The good document of the highest epoch held, or ``None``."""
        return self._documents[max(self._documents)] if self._documents else None

    def document_for(self, epoch):
        """:returns: the good document of ``epoch``, or ``None``."""
        return self._documents.get(epoch)

    def on_document(self, listener):
        """Call ``listener(document)`` for every new good document."""
        self._listeners.append(listener)

    def count_refusal(self, reason):
        self._counters.incr("directory.document_refused", reason)

    def accept(self, contents, epoch=None):
        """
        Check ``contents`` (a signed document) and keep it if good.

        :param epoch: the epoch it must be for, or ``None``.
        :returns: the :class:`nymprov.netdoc.NetworkDocument`.
        :raises DocumentError: (counted) if refused; what is held is unchanged.
        """
        try:
            document = verify_document(contents, self.directory_key, epoch)
        except DocumentError as e:
            self.count_refusal(e.reason)
            self.log.warn("refused a network document: {reason}: {detail}", reason=e.reason, detail=str(e))
            raise
        held = self._documents.get(document.epoch)
        if held is not None and held.generated > document.generated:
            # An older copy (a cache, a slow mirror) never replaces a newer one.
            return held
        self._documents[document.epoch] = document
        # Keep the newest two epochs: the current and the next.
        for old in sorted(self._documents)[:-2]:
            del self._documents[old]
        self._counters.incr("directory.document_accepted")
        for listener in list(self._listeners):
            listener(document)
        return document


class DocumentFetcher:
    """
    Fetches documents from a directory into a :class:`DocumentHolder`.

    :param agent: a ``twisted.web.client.Agent``.
    :param str url: the directory's base URL, e.g. ``http://127.0.0.1:8080``.
    :param holder: the :class:`DocumentHolder`.
    """

    def __init__(self, agent, url, holder):
        self._agent = agent
        self._url = url.rstrip("/")
        self.holder = holder

    def fetch(self, epoch=None):
        """
        Fetch and check the document of ``epoch`` (the directory's current
        one if ``None``).

        :returns: a Deferred firing with the accepted document, or failing
            with a :class:`DocumentError` (the held documents unchanged).
        """
        path = "/v1/document" if epoch is None else f"/v1/document/{int(epoch)}"
        d = request(self._agent, b"GET", self._url + path, max_bytes=MAX_DOCUMENT_BYTES)
        return d.addCallback(self._got, epoch)

    def _got(self, answer, epoch):
        status, body = answer
        if status != 200:
            error = refusal_of(status, body)
            self.holder.count_refusal(error.reason)
            return fail(error)
        try:
            return succeed(self.holder.accept(body, epoch))
        except DocumentError as e:
            return fail(e)



class DocumentRefresher:
    """
    Keeps a :class:`DocumentHolder` fresh: fetches the current epoch's and
    the next epoch's documents now and every ``interval`` seconds.  A failed
    fetch is counted and changes nothing held.

    :param fetcher: a :class:`DocumentFetcher`.
    :param epochs: the network's :class:`nymprov.netdoc.Epochs`.
    :param clock: an ``IReactorTime``.
    :param float interval: seconds between refreshes.
    """

    log = Logger()

    def __init__(self, fetcher, epochs, clock, interval):
        self.fetcher = fetcher
        self.holder = fetcher.holder
        self.epochs = epochs
        self._clock = clock
        self.interval = interval
        self._refreshing = None
        self._loop = None

    def refresh(self):
        """Fetch both documents; the Deferred never fails."""
        from twisted.internet.defer import DeferredList

        if self._refreshing is not None:
            return self._refreshing
        current = self.epochs.number_at(self._clock.seconds())
        waits = [self.fetcher.fetch(epoch) for epoch in (current, current + 1)]
        d = DeferredList(waits, consumeErrors=True).addCallback(self._fetched)
        if not d.called:
            self._refreshing = d
        return d

    def _fetched(self, results):
        self._refreshing = None
        for ok, failure in results:
            if not ok:
                # Counted by the holder or fetcher; the last good one stays.
                self.log.debug("fetching a network document failed: {why}", why=failure.getErrorMessage())

    def start(self):
        """Refresh now and every interval; returns the first refresh's Deferred."""
        from twisted.internet.task import LoopingCall

        self._loop = LoopingCall(self.refresh)
        self._loop.clock = self._clock
        self._loop.start(self.interval, now=True)
        return self._refreshing or succeed(None)

    def stop(self):
        """Stop refreshing; fires once no fetch is in flight."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        return self._refreshing if self._refreshing is not None else succeed(None)
