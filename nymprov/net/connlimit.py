"""
Connection caps of one listener: in all, and per peer network (one IPv4
address, or one IPv6 /64, which a single host can fill with addresses).
"""

import ipaddress


def peer_network(host):
    """
    :returns: the key a peer's connections are counted under: the IPv4
        address, or the IPv6 /64 (an IPv4-mapped IPv6 address counts as
        its IPv4 address); the text itself for anything else (UNIX).
    """
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if address.version == 6:
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


class ConnectionLimits:
    """
    Counts the open connections of one listener.

    :param int max_total: connections at most.
    :param int max_per_network: connections at most from one IPv4 address
        or IPv6 /64.
    """

    #: Seconds between two log lines about refused connections: a flood
    #: of refusals is one line per interval, not one per connection.
    LOG_INTERVAL = 60.0

    def __init__(self, max_total, max_per_network):
        if max_total < 1 or max_per_network < 1:
            raise ValueError("connection limits must be at least 1")
        self.max_total = max_total
        self.max_per_network = max_per_network
        self.total = 0
        self._by_network = {}
        self._refused_unlogged = 0
        self._logged_at = None

    def admit(self, host):
        """
        Count a new connection from ``host`` if the caps allow it.

        :returns: the key to :meth:`release` it with, or ``None`` with
            nothing counted when a cap is reached.
        """
        network = peer_network(host)
        if self.total >= self.max_total or self._by_network.get(network, 0) >= self.max_per_network:
            return None
        self.total += 1
        self._by_network[network] = self._by_network.get(network, 0) + 1
        return network

    def refusal(self, host):
        """:returns: which cap refuses ``host`` now: ``"total"`` or ``"per_ip"``."""
        return "total" if self.total >= self.max_total else "per_ip"

    def refused_to_log(self, now):
        """
        Note one refused connection.

        :returns: how many were refused since the last log line when one
            is due now (at most one per ``LOG_INTERVAL``), else 0.
        """
        self._refused_unlogged += 1
        if self._logged_at is not None and now - self._logged_at < self.LOG_INTERVAL:
            return 0
        count, self._refused_unlogged, self._logged_at = self._refused_unlogged, 0, now
        return count

    def release(self, network):
        """A connection counted under ``network`` has closed."""
        self.total -= 1
        left = self._by_network[network] - 1
        if left:
            self._by_network[network] = left
        else:
            del self._by_network[network]

    def from_network(self, host):
        """:returns: how many connections ``host``'s network has open."""
        return self._by_network.get(peer_network(host), 0)
