"""The ``echo`` backend plugin: answer every request through its SURBs."""

from twisted.plugin import IPlugin
from zope.interface import implementer

from nymprov.interfaces import IProviderMaker
from nymprov.plugins import BackendOptions


class EchoOptions(BackendOptions):
    """The echo backend has no options."""

    optParameters = []


@implementer(IPlugin, IProviderMaker)
class EchoMaker:
    """Makes :class:`nymprov.backends.echo.EchoProvider`."""

    name = "echo"
    description = "send every request's body back through its SURBs (diagnostics, tests)"
    options = EchoOptions

    def make(self, config, options, sender, topology, reactor, **context):
        """IProviderMaker API"""
        from nymprov.backends.echo import EchoProvider

        return EchoProvider(sender, topology, reactor)


echo = EchoMaker()
