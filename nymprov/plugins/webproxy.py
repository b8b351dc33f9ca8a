"""The ``webproxy`` backend plugin: HTTP requests out, responses back through SURBs."""

from twisted.plugin import IPlugin
from twisted.python import usage
from zope.interface import implementer

from nymprov.interfaces import IProviderMaker
from nymprov.plugins import BackendOptions, positive


class WebProxyOptions(BackendOptions):
    """Options of the web proxy; the allow-list is empty by default."""

    optParameters = [
        ["allow", None, "", "comma-separated scheme://host:port that may be fetched (empty: none)"],
        ["timeout", None, 30.0, "seconds for a whole fetch", positive(float)],
        ["max-body", None, 1048576, "response body bytes kept at most", positive(int)],
        ["max-concurrent", None, 16, "fetches at once", positive(int)],
    ]

    def postOptions(self):
        from nymprov.backends.webproxy import parse_allow_list

        try:
            self["allowed"] = parse_allow_list(self["allow"])
        except ValueError as e:
            raise usage.UsageError(f"allow: {e}")


@implementer(IPlugin, IProviderMaker)
class WebProxyMaker:
    """Makes :class:`nymprov.backends.webproxy.WebProxyProvider`."""

    name = "webproxy"
    description = "fetch allowed http(s) URLs and send the responses back through SURBs"
    options = WebProxyOptions

    def make(self, config, options, sender, topology, reactor, **context):
        """IProviderMaker API"""
        from nymprov.backends.webproxy import WebProxyProvider

        return WebProxyProvider(
            sender, topology, reactor,
            allowed=options["allowed"],
            timeout=options["timeout"],
            max_body=options["max-body"],
            max_concurrent=options["max-concurrent"],
        )


webproxy = WebProxyMaker()
