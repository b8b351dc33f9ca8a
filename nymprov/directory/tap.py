"""The twistd/twist plugin glue of the directory: options in, service out."""

from nymprov.directory.config import DirectoryOptions

Options = DirectoryOptions


def makeService(config, reactor=None):
    """
    Build the directory service that the parsed ``config`` describes.

    :param config: parsed :class:`nymprov.directory.config.DirectoryOptions`.
    :param reactor: the reactor to run on; the global one if ``None``.
    """
    if reactor is None:
        from twisted.internet import reactor
    from nymprov.directory.service import DirectoryService
    from nymprov.node.twistd import twistd_root

    # Wrapped as the nodes are: a start failure is one line and exit 1.
    return twistd_root(DirectoryService(config.directory_config, reactor, stop_reactor_on_failure=True),
                       config, reactor)
