"""The ``inbox`` backend plugin: hold messages until their client pulls them."""

from twisted.plugin import IPlugin
from zope.interface import implementer

from nymprov.interfaces import IProviderMaker
from nymprov.plugins import BackendOptions


class InboxOptions(BackendOptions):
    """The inbox has no options of its own: the store settings apply."""

    optParameters = []


@implementer(IPlugin, IProviderMaker)
class InboxMaker:
    """Makes :class:`nymprov.backends.inbox.InboxProvider` over the node's store."""

    name = "inbox"
    description = "keep each message in its client's inbox until pulled (the default)"
    options = InboxOptions

    def make(self, config, options, sender, topology, reactor, **context):
        """IProviderMaker API"""
        from nymprov.backends.inbox import InboxProvider

        return InboxProvider(context["store"], reactor)


inbox = InboxMaker()
