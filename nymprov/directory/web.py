"""
The directory's HTTP API on ``twisted.web``: nodes POST their descriptors,
anyone GETs the network document.  Every refusal is a JSON object
``{"error": REASON, "detail": TEXT}`` with an HTTP status, and changes
nothing (``doc/directory.md`` lists them).
"""

import json

from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from nymprov.netdoc.descriptor import MAX_DESCRIPTOR_BYTES
from nymprov.netdoc.errors import DocumentError, TooLarge, UnknownEpoch
from nymprov.netdoc.signed import key_text

#: The HTTP status of each refusal.
STATUS = {
    "malformed": 400,
    "stale_timestamp": 409,
    "future_timestamp": 400,
    "no_usable_key": 400,
    "bad_signature": 403,
    "not_admitted": 403,
    "identity_conflict": 409,
    "unknown_epoch": 404,
    "not_found": 404,
    "method_not_allowed": 405,
    "too_large": 413,
}

JSON = b"application/json"


def _answer(request, status, body):
    request.setResponseCode(status)
    request.setHeader(b"content-type", JSON)
    request.setHeader(b"cache-control", b"no-store")
    return body


def _refuse(request, reason, detail=""):
    body = json.dumps({"error": reason, "detail": detail}).encode("utf-8")
    return _answer(request, STATUS.get(reason, 400), body)


class BoundedRequest(Request):
    """
    A request that stops keeping its body past :data:`MAX_BODY` bytes, so a
    huge POST costs the directory no memory or disk; it is answered
    ``too_large``.
    """

    MAX_BODY = MAX_DESCRIPTOR_BYTES

    too_large = False
    _received = 0

    def handleContentChunk(self, data):
        self._received += len(data)
        if self._received > self.MAX_BODY:
            self.too_large = True
            return
        Request.handleContentChunk(self, data)


class _Leaf(Resource):
    isLeaf = True

    def render(self, request):
        method = request.method.decode("ascii", "replace")
        handler = getattr(self, f"render_{method}", None)
        if handler is None:
            return _refuse(request, "method_not_allowed", f"{method} is not served here")
        return handler(request)


class DescriptorsResource(_Leaf):
    """``POST /v1/descriptors``: publish a signed descriptor."""

    log = Logger()

    def __init__(self, registry, clock):
        super().__init__()
        self._registry = registry
        self._clock = clock

    def render_POST(self, request):
        if request.postpath not in ([], [b""]):
            return _refuse(request, "not_found")
        if getattr(request, "too_large", False):
            self._registry.count_refusal(TooLarge.reason)
            return _refuse(request, TooLarge.reason, f"a descriptor is at most {MAX_DESCRIPTOR_BYTES} bytes")
        body = request.content.read(MAX_DESCRIPTOR_BYTES + 1)
        now = self._clock.seconds()
        try:
            descriptor = self._registry.publish(body, now)
        except DocumentError as e:
            self.log.debug("refused a descriptor: {reason}: {detail}", reason=e.reason, detail=str(e))
            return _refuse(request, e.reason, str(e))
        answer = {
            "accepted": key_text(descriptor.identity),
            "epoch": self._registry.epochs.number_at(now),
        }
        return _answer(request, 200, json.dumps(answer).encode("utf-8"))


class DocumentResource(_Leaf):
    """``GET /v1/document`` (current epoch) and ``GET /v1/document/N``."""

    def __init__(self, registry, clock):
        super().__init__()
        self._registry = registry
        self._clock = clock

    def render_GET(self, request):
        now = self._clock.seconds()
        path = [segment for segment in request.postpath if segment]
        if not path:
            epoch = self._registry.epochs.number_at(now)
        elif len(path) == 1 and path[0].isdigit() and len(path[0]) < 12:
            epoch = int(path[0])
        else:
            return _refuse(request, "not_found", "expected /v1/document or /v1/document/EPOCH")
        try:
            contents = self._registry.document(epoch, now)
        except UnknownEpoch as e:
            return _refuse(request, e.reason, str(e))
        return _answer(request, 200, contents)


class DirectoryInfoResource(_Leaf):
    """``GET /v1/directory``: the directory's key, current epoch and parameters."""

    def __init__(self, registry, clock):
        super().__init__()
        self._registry = registry
        self._clock = clock

    def render_GET(self, request):
        now = self._clock.seconds()
        info = {
            "directory": key_text(self._registry.public_key),
            "epoch": self._registry.epochs.number_at(now),
            "nodes": len(self._registry),
            "parameters": self._registry.parameters,
        }
        return _answer(request, 200, json.dumps(info).encode("utf-8"))


class _NotFound(_Leaf):
    def render(self, request):
        return _refuse(request, "not_found", "see doc/directory.md for the API")


class _Root(Resource):
    def __init__(self, children):
        super().__init__()
        self._children = children

    def getChild(self, name, request):
        if name == b"v1" and request.postpath:
            child = self._children.get(request.postpath.pop(0))
            if child is not None:
                request.prepath.append(b"v1")
                return child
        return _NotFound()


class _QuietSite(Site):
    """A site that writes no access log: nodes poll every few seconds, and
    refusals are counted by reason (``descriptors.refused``)."""

    def log(self, request):
        pass


def make_site(registry, clock):
    """:returns: the ``twisted.web`` ``Site`` of the directory API."""
    root = _Root(
        {
            b"descriptors": DescriptorsResource(registry, clock),
            b"document": DocumentResource(registry, clock),
            b"directory": DirectoryInfoResource(registry, clock),
        }
    )
    site = _QuietSite(root, requestFactory=BoundedRequest)
    site.displayTracebacks = False
    site.noisy = False
    return site
