"""
The exit policy of the ``socks5`` backend: default deny.

A policy file holds one rule a line, ``HOST PORTS``; ``#`` starts a
comment.  ``HOST`` is a host name (``example.org``), a domain suffix
(``.example.org``: the domain and every name under it), an address or a
network (``192.0.2.7``, ``10.1.0.0/16``); ``PORTS`` is ``*`` or a comma
list of ports and ranges (``80,443,8000-8100``).  A name that resolves
into loopback, private, link-local, multicast or other special ranges is
refused unless a rule names that address or network itself.
"""

import ipaddress


class PolicyError(ValueError):
    """A policy file line that is not a rule."""


def _ports(text):
    if text == "*":
        return ((1, 0xFFFF),)
    ranges = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        low, high = int(low), int(high or low)
        if not 0 < low <= high <= 0xFFFF:
            raise PolicyError(f"bad port range {part!r}")
        ranges.append((low, high))
    return tuple(ranges)


def _in(port, ranges):
    return any(low <= port <= high for low, high in ranges)


def _special(address):
    return (address.is_loopback or address.is_private or address.is_link_local or address.is_multicast
            or address.is_unspecified or address.is_reserved)


class ExitPolicy:
    """``names``: ``(name, is_suffix, ports)``; ``networks``: ``(network, ports)``."""

    def __init__(self, names=(), networks=()):
        self.names = tuple(names)
        self.networks = tuple(networks)

    @classmethod
    def parse(cls, text):
        """:raises PolicyError: naming the line that is not a rule."""
        names, networks = [], []
        for number, line in enumerate(text.splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            try:
                host, ports = line.split()
                ports = _ports(ports)
            except ValueError as e:
                raise PolicyError(f"line {number}: {line!r}: {e}")
            try:
                networks.append((ipaddress.ip_network(host, strict=False), ports))
            except ValueError:
                host = host.lower()
                names.append((host.lstrip("."), host.startswith("."), ports))
        return cls(names, networks)

    @classmethod
    def load(cls, path):
        with open(path, encoding="utf-8") as f:
            return cls.parse(f.read())

    def allows_name(self, host, port):
        """Whether a rule lets ``host`` (a name or an address as text) be asked for on ``port``."""
        host = host.lower().rstrip(".")
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            address = None
        if address is not None:
            return any(address in net and _in(port, ports) for net, ports in self.networks)
        for name, is_suffix, ports in self.names:
            if (host == name or (is_suffix and host.endswith("." + name))) and _in(port, ports):
                return True
        return False

    def allows_address(self, address, port):
        """Whether a resolved ``address`` (text) may be connected to on ``port``."""
        address = ipaddress.ip_address(address)
        if any(address in net and _in(port, ports) for net, ports in self.networks):
            return True
        return not _special(address)
