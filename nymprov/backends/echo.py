"""
The echo backend: answers every request with its own body, through the
SURBs it carries (a diagnostic, and a fixture for tests).
"""

from twisted.logger import Logger
from zope.interface import implementer

from nymprov.backends.surbreply import ReplyingBackend
from nymprov.interfaces import IProvider


@implementer(IProvider)
class EchoProvider(ReplyingBackend):
    """
    Sends each request's body back, truncated to what its SURBs can carry;
    a request without SURBs is accepted and dropped.
    """

    log = Logger()
    name = "echo"

    def handle(self, request):
        """Echo ``request.body``."""
        if not request.surbs:
            return None
        refused = self.reply(request, request.body[: request.reply_capacity])
        if refused:
            self.log.warn("echo: {count} reply packets refused by full queues", count=refused)
        return None
