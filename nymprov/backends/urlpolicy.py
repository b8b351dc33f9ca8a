"""
URLs a backend may fetch: parsed once into one canonical form (IDNA host,
percent-encoded target) that is compared, resolved and fetched alike, and
the addresses a host name may resolve to.

Hand-written on top of ``urllib.parse``, ``idna`` and ``ipaddress``: none
of them says on its own whether two spellings name the same origin, and
getting that wrong lets an allowed name fetch another host.
"""

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

import idna

DEFAULT_PORTS = {"http": 80, "https": 443}

# ASCII letters only: str.lower() would also map, say, the Kelvin sign to
# "k", so that a host compared in one form would be fetched in another.
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")

# Labels that resolvers may read as numbers (127.1, 0x7f.1, 2130706433):
# only the strict dotted quad is taken as an address; the rest are refused.
_NUMERIC_LABELS = re.compile(r"^(0x[0-9a-f]*|[0-9]+)(\.(0x[0-9a-f]*|[0-9]+))*\.?$")

# What may stay as it is in a request target; anything else (non-ASCII,
# spaces, controls) is percent-encoded from its UTF-8 bytes, losing nothing.
_TARGET_SAFE = "/%:@!$&'()*+,;=-._~"


@dataclass(frozen=True)
class CanonicalURL:
    """
    An http(s) URL in the one form it is compared and fetched in.

    :ivar str scheme: ``http`` or ``https``.
    :ivar str host: ASCII: an IDNA A-label name, a dotted IPv4 address or
        a compressed IPv6 address (without brackets).
    :ivar int port: the port, the scheme's default filled in.
    :ivar str target: path and query, ASCII, percent-encoded.
    """

    scheme: str
    host: str
    port: int
    target: str = "/"

    @property
    def origin(self):
        """``(scheme, host, port)``, as allow-lists hold them."""
        return self.scheme, self.host, self.port

    @property
    def ip(self):
        """The host as an ``ipaddress`` address, or ``None`` for a name."""
        try:
            return ipaddress.ip_address(self.host)
        except ValueError:
            return None

    def url(self):
        """:returns: the URL to fetch, as ASCII bytes."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = "" if DEFAULT_PORTS[self.scheme] == self.port else f":{self.port}"
        return f"{self.scheme}://{host}{port}{self.target}".encode("ascii")


def _canonical_host(text):
    if text.startswith("["):
        if not text.endswith("]") or "%" in text:
            raise ValueError("bad IPv6 literal")
        return str(ipaddress.IPv6Address(text[1:-1]))
    host = text.translate(_ASCII_LOWER).rstrip(".")
    if not host:
        raise ValueError("no host")
    if host.isascii() and _NUMERIC_LABELS.match(host):
        # Strict dotted quad or nothing.
        return str(ipaddress.IPv4Address(host))
    try:
        # IDNA 2008 without UTS 46 mapping: a host must already be in
        # canonical form; compatibility characters and capitals are refused.
        encoded = idna.encode(host).decode("ascii")
    except idna.IDNAError as e:
        raise ValueError(f"host is not a valid IDNA name: {e}") from None
    if host.isascii() and encoded != host:
        raise ValueError("host is not in canonical form")
    return encoded


def parse_url(url):
    """
    :param str url: an absolute http(s) URL.
    :returns: its :class:`CanonicalURL`.
    :raises ValueError: for anything else, or a host that is not in a
        canonical IDNA or IP form (credentials in the URL included).
    """
    if not isinstance(url, str):
        raise ValueError("URL is not text")
    parts = urlsplit(url)
    scheme = parts.scheme.translate(_ASCII_LOWER)
    if scheme not in DEFAULT_PORTS:
        raise ValueError(f"scheme {scheme!r} is not http or https")
    netloc = parts.netloc
    if "@" in netloc:
        raise ValueError("credentials in the URL")
    if netloc.startswith("["):
        end = netloc.find("]")
        host, rest = netloc[:end + 1], netloc[end + 1:]
        if rest and not rest.startswith(":"):
            raise ValueError("bad host")
        port_text = rest[1:] if rest else ""
    else:
        host, _, port_text = netloc.partition(":")
    if not host:
        raise ValueError("no host")
    if port_text:
        if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) < 65536:
            raise ValueError(f"bad port {port_text!r}")
        port = int(port_text)
    else:
        port = DEFAULT_PORTS[scheme]
    target = quote(parts.path or "/", safe=_TARGET_SAFE)
    if parts.query:
        target += "?" + quote(parts.query, safe=_TARGET_SAFE + "?")
    return CanonicalURL(scheme, _canonical_host(host), port, target)


def parse_origin(url):
    """
    :returns: ``(scheme, host, port)`` of an absolute http(s) URL, in the
        canonical form of :func:`parse_url`.
    :raises ValueError: if ``url`` is not one.
    """
    return parse_url(url).origin


def parse_allow_list(text):
    """
    :param str text: comma-separated ``scheme://host[:port]`` entries.
    :returns: a frozenset of ``(scheme, host, port)``.
    :raises ValueError: naming the bad entry.
    """
    allowed = set()
    for entry in filter(None, (e.strip() for e in text.split(","))):
        try:
            allowed.add(parse_origin(entry))
        except ValueError as e:
            raise ValueError(f"bad allow entry {entry!r}: {e}")
    return frozenset(allowed)


def is_public(address):
    """
    :param address: an ``ipaddress`` address.
    :returns: whether it is a public unicast address: not loopback,
        private, link-local, shared, reserved, unspecified or multicast
        (an IPv4-mapped IPv6 address is judged as its IPv4 address).
    """
    mapped = getattr(address, "ipv4_mapped", None)
    if mapped is not None:
        address = mapped
    return address.is_global and not address.is_multicast


def fetchable_addresses(url, resolved, allowed):
    """
    :param url: a :class:`CanonicalURL` whose origin is allowed.
    :param resolved: the addresses (text) its host resolved to.
    :param allowed: the allow-list's ``(scheme, host, port)`` entries.
    :returns: those of ``resolved`` it may be fetched from: public ones,
        and any the allow-list names as a literal IP for this scheme and
        port.
    """
    fetchable = []
    for text in resolved:
        address = ipaddress.ip_address(text)
        if is_public(address) or (url.scheme, str(address), url.port) in allowed:
            fetchable.append(str(address))
    return fetchable
