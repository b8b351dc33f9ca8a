"""Socket addresses as text: what settings, topology files and log lines show."""

import ipaddress


def host_port_text(host, port):
    """:returns: ``"ip:port"``, or ``"[ipv6]:port"``: what :func:`parse_host_port` reads."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_host_port(text, any_port=False):
    """
    Parse ``"ip:port"`` (``"[ipv6]:port"`` for IPv6) into ``(ip, port)``;
    with ``any_port``, port 0 (a listener's: the kernel picks) too.

    Only IP addresses: a first-layer mix node is named in Sphinx headers by
    its socket address, which has no room for a host name.

    :raises ValueError: with a short reason.
    """
    if text.startswith("["):
        host, bracket, port = text[1:].partition("]:")
        if not bracket:
            raise ValueError("expected [ipv6]:port")
    else:
        host, colon, port = text.rpartition(":")
        if not colon:
            raise ValueError("expected ip:port")
        if ":" in host:
            raise ValueError("put an IPv6 address in brackets: [ipv6]:port")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{host!r} is not an IP address")
    if not (port.isascii() and port.isdigit()) or not (0 if any_port else 1) <= int(port) < 65536:
        raise ValueError(f"{port!r} is not a port number")
    return (str(address), int(port))


def show_address(address):
    """:returns: ``host:port`` (``[host]:port`` for IPv6) of an ``IAddress``."""
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if host is None:
        # A UNIX socket: its path.
        name = getattr(address, "name", None)
        if isinstance(name, bytes):
            name = name.decode("utf-8", "replace")
        return name or str(address)
    return host_port_text(host, port)
