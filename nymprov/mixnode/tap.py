"""The twistd/twist plugin glue of the mix node: options in, service out."""

from nymprov.mixnode.config import MixNodeOptions

Options = MixNodeOptions


def makeService(config, reactor=None):
    """
    Build the mix node service that the parsed ``config`` describes.

    :param config: parsed :class:`nymprov.mixnode.config.MixNodeOptions`.
    :param reactor: the reactor to run on; the global one if ``None``.
    :rtype: twisted.application.service.IService
    """
    if reactor is None:
        from twisted.internet import reactor
    from nymprov.mixnode.service import MixNodeService

    return MixNodeService(config.mixnode_config, reactor, stop_reactor_on_failure=True)
