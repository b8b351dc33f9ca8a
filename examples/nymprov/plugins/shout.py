"""
An example provider backend: ``shout`` answers every request with its
body in capitals, through the SURBs the request carries.

Install: put this file in a ``nymprov/plugins/`` directory (no
``__init__.py`` there) on ``sys.path``, e.g. in your own distribution;
then ``nym-provider run --backend shout --backend-option times=2``.
"""

from twisted.plugin import IPlugin
from twisted.python import usage
from zope.interface import implementer

from nymprov.backends.surbreply import ReplyingBackend
from nymprov.interfaces import IProvider, IProviderMaker
from nymprov.plugins import BackendOptions


@implementer(IProvider)
class ShoutProvider(ReplyingBackend):
    """Replies with the request's body in capitals, ``times`` times over."""

    name = "shout"

    def __init__(self, sender, topology, clock, times):
        ReplyingBackend.__init__(self, sender, topology, clock)
        self.times = times

    def handle(self, request):
        # Called with a whole request whose SURBs were checked; returning
        # means "taken responsibility" (the node then sends the SURB-ACK),
        # raising a DeliveryError refuses (no ACK).
        answer = request.body.upper() * self.times
        self.reply(request, answer[: request.reply_capacity])


class ShoutOptions(BackendOptions):
    optParameters = [["times", None, 1, "how many times to repeat the body", int]]

    def postOptions(self):
        if not 1 <= self["times"] <= 10:
            raise usage.UsageError("times: must be 1 to 10")


@implementer(IPlugin, IProviderMaker)
class ShoutMaker:
    name = "shout"
    description = "answer every request in capitals (an example plugin)"
    options = ShoutOptions

    def make(self, config, options, sender, topology, reactor, **context):
        return ShoutProvider(sender, topology, reactor, options["times"])


shout = ShoutMaker()
