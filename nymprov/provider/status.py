"""The provider's status for the operator's HTTP API: the node's, plus its store and client API."""

from nymprov.net.addresses import show_address
from nymprov.node.status import NodeStatus


class ProviderStatus(NodeStatus):
    """
    :param service: a :class:`nymprov.provider.service.ProviderService`.
    """

    def __init__(self, service):
        self._sizes = {}
        NodeStatus.__init__(self, service, "provider", service.store)

    def _add_gauges(self):
        NodeStatus._add_gauges(self)
        add = self.metrics.add_gauge
        add("inbox_clients", "Registered clients", lambda: self._sizes.get("clients"))
        add("inbox_messages", "Messages stored for clients", lambda: self._sizes.get("messages"))
        add("inbox_bytes", "Bytes of messages stored for clients", lambda: self._sizes.get("bytes"))

    def refresh(self):
        """Read the store's sizes (the store answers with a Deferred)."""
        if getattr(self.store, "state", "open") != "open":
            # A closed store has no sizes; the gauges are left out.
            self._sizes = {}
            return NodeStatus.refresh(self)
        d = self.store.sizes()

        def keep(sizes):
            self._sizes = dict(sizes)

        return d.addCallback(keep)

    def endpoints(self):
        endpoints = NodeStatus.endpoints(self)
        endpoints["client_api"] = [show_address(port.getHost()) for port in self.service.client_ports]
        return endpoints

    def description(self):
        description = NodeStatus.description(self)
        service = self.service
        certificate = service.certificate
        if certificate is not None:
            from nymprov.net.tls import certificate_fingerprint

            description["client_tls_fingerprint"] = certificate_fingerprint(certificate).hex()
        description["backend"] = service.config.backend
        description["registration"] = service.config.registration
        if service.config.backend == "inbox":
            # The largest message the inbox keeps (a slot): larger ones are
            # counted as message_too_large at the final hop.
            description["max_message_bytes"] = service.config.slot_size
        return description
