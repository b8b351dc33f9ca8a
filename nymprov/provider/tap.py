"""The twistd/twist plugin glue: options in, provider service out."""

from nymprov.provider.config import RunOptions, load_config

Options = RunOptions


def makeService(config, reactor=None):
    """
    Build the provider service that ``config`` describes.  Nothing is made
    on disk here: the service binds its ports and makes its data directory
    in ``privilegedStartService``, giving the files to twistd's
    ``--uid/--gid`` user.

    :param config: parsed :class:`RunOptions` (or a mapping with its keys).
    :param reactor: the reactor to run on; the global one if ``None``.
    :rtype: twisted.application.service.IService
    """
    if reactor is None:
        from twisted.internet import reactor
    # Imported here: the service pulls in the whole node, which twistd
    # should not load just to list its plugins.
    from nymprov.node.twistd import owner_of, twistd_root
    from nymprov.provider.service import make_provider_service

    # RunOptions checked the settings while parsing; a plain mapping has not.
    provider_config = getattr(config, "provider_config", None)
    if provider_config is None:
        provider_config = load_config(config)
    from nymprov.node.operator import reload_on_hangup

    node = make_provider_service(provider_config, reactor, owner_of(config))
    # SIGHUP reads the same options and --config file again (twistd
    # reopens its own log on SIGUSR1).
    reload_on_hangup(node, lambda: load_config(config), reactor)
    return twistd_root(node, config, reactor)
