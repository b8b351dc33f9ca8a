"""
The operator's admin interface: JSON over HTTP on a UNIX socket in the
data directory (mode 0600 in a 0700 directory), so that only the
operator's account can reach it.
"""

import json

from twisted.internet.defer import maybeDeferred
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from nymprov.httpapi.resources import json_response

#: Largest request body the admin interface reads.
MAX_BODY = 64 * 1024


class AdminError(Exception):
    """A request the operator should change: unknown client, bad code, ..."""

    def __init__(self, message, status=400):
        Exception.__init__(self, message)
        self.status = status


class _Routes(Resource):
    """
    Every route: ``{(method, path): operation}``, where ``operation(body)``
    takes the request's JSON body (a dict; empty for GET) and returns a
    JSON-able result or a Deferred of one.
    """

    isLeaf = True
    log = Logger()

    def __init__(self, routes):
        Resource.__init__(self)
        self._routes = routes

    def render(self, request):
        path = "/" + "/".join(p.decode("utf-8", "replace") for p in request.prepath + request.postpath)
        path = path.rstrip("/") or "/"
        method = request.method.decode("ascii", "replace")
        operation = self._routes.get((method, path))
        if operation is None:
            known = sorted(f"{m} {p}" for m, p in self._routes)
            code = 405 if any(p == path for _, p in self._routes) else 404
            return json_response(request, code, {"error": f"no route {method} {path}", "routes": known})
        try:
            raw = request.content.read(MAX_BODY + 1) if request.content is not None else b""
            if len(raw) > MAX_BODY:
                raise AdminError("request body too large", 413)
            body = json.loads(raw) if raw.strip() else {}
            if not isinstance(body, dict):
                raise AdminError("the body must be a JSON object")
        except (ValueError, UnicodeDecodeError) as e:
            return json_response(request, 400, {"error": f"bad JSON body: {e}"})
        except AdminError as e:
            return json_response(request, e.status, {"error": str(e)})
        d = maybeDeferred(operation, body)
        d.addCallbacks(lambda result: json_response(request, 200, result), self._failed,
                       errbackArgs=(request,))
        d.addCallback(self._send, request)
        return NOT_DONE_YET

    def _failed(self, failure, request):
        if failure.check(AdminError):
            return json_response(request, failure.value.status, {"error": str(failure.value)})
        if failure.check(KeyError) and isinstance(failure.value.args[0], str):
            return json_response(request, 400, {"error": f"missing field {failure.value.args[0]!r}"})
        self.log.failure("admin request failed", failure)
        return json_response(request, 500, {"error": f"failed: {failure.getErrorMessage()}"})

    def _send(self, body, request):
        if not request.finished and not request._disconnected:
            request.write(body)
            request.finish()


def make_admin_site(routes):
    """:returns: a ``Site`` serving ``routes`` (see :class:`_Routes`)."""
    site = Site(_Routes(routes))
    site.noisy = False
    site.log = lambda request: None
    return site
