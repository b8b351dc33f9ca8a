"""The ``forward`` backend plugin: post each payload to a URL, at least once."""

import os

from twisted.plugin import IPlugin
from twisted.python import usage
from zope.interface import implementer

from nymprov.interfaces import IProviderMaker
from nymprov.plugins import BackendOptions, positive


class ForwardOptions(BackendOptions):
    """Options of the forwarder; ``url`` is required."""

    optParameters = [
        ["url", None, None, "http(s) URL that every payload is POSTed to (required)"],
        ["content-type", None, "application/octet-stream", "Content-Type of the posts"],
        ["timeout", None, 10.0, "seconds for one post", positive(float)],
        ["retry-first", None, 1.0, "seconds before the first retry; doubles each time", positive(float)],
        ["retry-max", None, 300.0, "longest wait between retries, seconds", positive(float)],
        ["max-queue", None, 10000, "payloads queued at most", positive(int)],
        ["queue-file", None, None, "SQLite file of the queue (default: <data-dir>/forward.sqlite)"],
    ]

    def postOptions(self):
        from nymprov.backends.webproxy import parse_origin

        if not self["url"]:
            raise usage.UsageError("url: the forward backend needs a url")
        try:
            parse_origin(self["url"])
        except ValueError as e:
            raise usage.UsageError(f"url: {e}")


@implementer(IPlugin, IProviderMaker)
class ForwardMaker:
    """Makes :class:`nymprov.backends.forward.ForwardProvider`."""

    name = "forward"
    description = "POST every payload to a URL, at least once, from a durable queue"
    options = ForwardOptions

    def make(self, config, options, sender, topology, reactor, **context):
        """IProviderMaker API"""
        from nymprov.backends.forward import QUEUE_FILE, ForwardProvider

        return ForwardProvider(
            sender, topology, reactor,
            url=options["url"],
            path=options["queue-file"] or os.path.join(config.data_dir, QUEUE_FILE),
            content_type=options["content-type"].encode("ascii"),
            timeout=options["timeout"],
            retry_first=options["retry-first"],
            retry_max=options["retry-max"],
            max_queue=options["max-queue"],
        )


forward = ForwardMaker()
