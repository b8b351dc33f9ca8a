"""What the operator's HTTP API reads of a running directory."""

from nymprov._version import __version__
from nymprov.httpapi.health import Health
from nymprov.metrics import NodeMetrics
from nymprov.net.addresses import show_address


class DirectoryStatus:
    """
    The directory's status for :func:`nymprov.httpapi.resources.make_site`:
    its counters (descriptors accepted, refused by reason, expired), how
    many nodes it lists, whether it takes descriptors.

    :param directory: the :class:`nymprov.directory.service.DirectoryService`.
    """

    role = "directory"

    def __init__(self, directory):
        self.directory = directory
        self.http_api = None
        self.metrics = NodeMetrics(directory.counters)
        self.metrics.add_gauge("build_info", "Always 1: the version and role, as labels",
                               lambda: {(__version__, self.role): 1}, ("version", "role"))
        self.metrics.add_gauge("directory_nodes", "Nodes listed (descriptors not yet expired)",
                               lambda: None if directory.registry is None else len(directory.registry))

    def refresh(self):
        """Nothing to read ahead: every gauge is in memory."""
        return None

    def health(self):
        """:returns: ready while the registry is open and the service runs."""
        if not self.directory.running:
            return Health.not_ready("stopping")
        if self.directory.registry is None:
            return Health.not_ready("registry not open")
        return Health.ready_now()

    def description(self):
        """:returns: version, role, the key to pin and the endpoints."""
        from nymprov.netdoc.signed import key_text

        directory = self.directory
        return {
            "version": __version__,
            "role": self.role,
            "directory_key": key_text(directory.public_key) if directory.signing_key is not None else None,
            "endpoints": {
                "directory_api": [show_address(port.getHost()) for port in directory.listener.ports],
                "http_api": [show_address(port.getHost()) for port in directory.http_listener.ports],
            },
        }
