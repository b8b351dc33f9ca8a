"""
The resources of the operator's HTTP API.

They read a node through its status object (see :class:`HttpApi`), which
the provider and the mix node each make; nothing served names a client.
"""

import json

from twisted.internet.defer import maybeDeferred
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

JSON = b"application/json"


def json_response(request, code, document):
    """Set ``code`` and the JSON headers on ``request``; :returns: the body."""
    request.setResponseCode(code)
    request.setHeader(b"content-type", JSON)
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(document, indent=2, sort_keys=True).encode() + b"\n"


class _Leaf(Resource):
    isLeaf = True

    def __init__(self, status):
        Resource.__init__(self)
        self.status = status


class MetricsResource(_Leaf):
    """``/metrics``: the node's counters and gauges in Prometheus' text format."""

    log = Logger()

    def render_GET(self, request):
        finished = []
        request.notifyFinish().addBoth(finished.append)
        # Some gauges (the store's sizes) are read from the store first.
        d = maybeDeferred(self.status.refresh)

        def write(_):
            accept = (request.getHeader(b"accept") or b"").decode("latin-1")
            content_type, body = self.status.metrics.exposition(accept)
            request.setHeader(b"content-type", content_type.encode("ascii"))
            return body

        def failed(failure):
            self.log.failure("reading the metrics failed", failure)
            request.setResponseCode(500)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"reading the metrics failed\n"

        def send(body):
            if not finished:  # the scraper may have hung up meanwhile
                request.write(body)
                request.finish()

        d.addCallbacks(write, failed).addCallback(send)
        return NOT_DONE_YET


class HealthResource(_Leaf):
    """
    ``/health``: 200 when ready for traffic, else 503; the JSON body says
    ``live``, ``ready`` and, when not ready, why.  ``/health/live`` is 200
    while the process serves at all.
    """

    def render_GET(self, request):
        health = self.status.health()
        if request.postpath and request.postpath[0] == b"live":
            return json_response(request, 200 if health.live else 503, {"live": health.live})
        document = {"live": health.live, "ready": health.ready}
        if not health.ready:
            document["reason"] = health.reason
        return json_response(request, 200 if health.ready else 503, document)


class DescriptionResource(_Leaf):
    """``/description``: version, role, keys, endpoints, packet sizes, backend."""

    def render_GET(self, request):
        return json_response(request, 200, self.status.description())


class _Index(Resource):
    """``/``: the routes there are."""

    def __init__(self, routes):
        Resource.__init__(self)
        self._routes = routes

    def getChild(self, path, request):
        if path == b"":
            return self
        return Resource.getChild(self, path, request)

    def render_GET(self, request):
        return json_response(request, 200, {"routes": self._routes})


def make_site(status):
    """
    :param status: the node's status: ``metrics`` (a
        :class:`nymprov.metrics.NodeMetrics`), ``refresh()`` (may return a
        Deferred), ``health()`` (a :class:`Health`) and ``description()``
        (a JSON-able dict).
    :returns: a ``twisted.web`` ``Site`` serving the operator's routes.
    """
    routes = {
        "/metrics": "Prometheus metrics",
        "/health": "200 if ready, else 503 with the reason",
        "/health/live": "200 while the process serves",
        "/description": "version, role, keys, endpoints, packet sizes, backend",
    }
    root = _Index(routes)
    root.putChild(b"metrics", MetricsResource(status))
    root.putChild(b"health", HealthResource(status))
    root.putChild(b"description", DescriptionResource(status))
    site = Site(root)
    site.noisy = False
    # Scrapes every few seconds would fill the log; the access log is off.
    site.log = lambda request: None
    return site
