"""The twistd/twist plugin glue of the mix node: options in, service out."""

from nymprov.mixnode.config import MixNodeOptions

Options = MixNodeOptions


def makeService(config, reactor=None):
    """
    Build the mix node service that the parsed ``config`` describes; it
    binds its ports and makes its data directory in
    ``privilegedStartService``, for twistd's ``--uid/--gid`` user.

    :param config: parsed :class:`nymprov.mixnode.config.MixNodeOptions`.
    :param reactor: the reactor to run on; the global one if ``None``.
    :rtype: twisted.application.service.IService
    """
    if reactor is None:
        from twisted.internet import reactor
    from nymprov.mixnode.service import MixNodeService
    from nymprov.node.twistd import owner_of, twistd_root

    from nymprov.mixnode.config import reread_config
    from nymprov.node.operator import reload_on_hangup

    node = MixNodeService(config.mixnode_config, reactor, stop_reactor_on_failure=True, owner=owner_of(config))
    # SIGHUP reads the same options and --config file again (twistd
    # reopens its own log on SIGUSR1).
    reload_on_hangup(node, lambda: reread_config(config), reactor)
    return twistd_root(node, config, reactor)
