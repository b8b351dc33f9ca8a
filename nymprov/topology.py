"""
What a node or client knows of the mixnet: its mix layers and providers,
from a fixed list or a topology file (JSON).

A topology file looks like this (``client_tls`` and
``certificate_fingerprint`` are optional; ``client_address`` too, for a
provider that serves no client API because its backend keeps no inbox;
keys are base58, as Nym prints them)::

    {"version": 1,
     "mixnodes": [{"identity": "...", "sphinx_key": "...",
                   "mix_address": "127.0.0.1:1790", "layer": 1}, ...],
     "providers": [{"identity": "...", "sphinx_key": "...",
                    "mix_address": "127.0.0.1:1789",
                    "client_address": "127.0.0.1:9000",
                    "client_tls": true,
                    "certificate_fingerprint": "<64 hex digits>"}, ...]}
"""

import ipaddress
import json
import os
from dataclasses import dataclass
from functools import cached_property

import base58
from zope.interface import implementer

from nymprov.net.addresses import host_port_text
from nymprov.errors import ConfigError
from nymprov.interfaces import ITopology
from nymprov.sphinx import Node, encode_address

TOPOLOGY_VERSION = 1

#: Sphinx routes have at most five hops; the last is a provider.
MAX_LAYERS = 4

#: A topology file larger than this is refused unread: even a big network's
#: file is a few hundred kilobytes.
MAX_TOPOLOGY_BYTES = 16 * 1024 * 1024

_KEY_LENGTH = 32
_FINGERPRINT_LENGTH = 32  # bytes of SHA-256


class TopologyError(ConfigError):
    """
    A topology is malformed; the message names the field, for example
    ``mixnodes[2].sphinx_key: not base58 of 32 bytes``.

    :ivar field: the path of the offending field (``""`` for the whole).
    """

    reason = "bad_topology"

    def __init__(self, field, problem):
        super().__init__(f"{field}: {problem}" if field else problem)
        self.field = field
        self.problem = problem


@implementer(ITopology)
class StaticTopology:
    """
    Fixed sets of node addresses, from the configuration.

    :param first_layer: iterable of 32-byte addresses of first-layer mixes.
    :param other_nodes: iterable of 32-byte addresses of every other node
        (later layers and providers).
    """

    def __init__(self, first_layer=(), other_nodes=()):
        self._first_layer = frozenset(first_layer)
        self._known = self._first_layer | frozenset(other_nodes)

    def is_first_layer(self, address):
        """ITopology API"""
        return address in self._first_layer

    def is_known_node(self, address):
        """ITopology API"""
        return address in self._known


@implementer(ITopology)
class SwappableTopology:
    """
    A topology that can be replaced while the node runs (SIGHUP reloads
    the topology file): the node's parts keep this one object and see the
    new topology at once.

    :param current: the ``ITopology`` to start with.
    """

    def __init__(self, current):
        self.current = current

    def replace(self, topology):
        """Use ``topology`` from now on."""
        self.current = topology

    def is_first_layer(self, address):
        """ITopology API"""
        return self.current.is_first_layer(address)

    def is_known_node(self, address):
        """ITopology API"""
        return self.current.is_known_node(address)

    def __getattr__(self, name):
        # The rest of a topology's API (nodes, providers, ...) is the
        # current one's.
        return getattr(self.current, name)


def provider_topology(first_layer=(), topology_path=None):
    """
    What a provider knows: the ``first_layer`` addresses it was given and,
    with a topology file, that file's first layer and every node in it.

    :param first_layer: iterable of 32-byte first-layer node addresses.
    :param topology_path: a topology file, or ``None``.
    :rtype: StaticTopology
    :raises TopologyError: if the file is malformed.
    """
    first_layer = list(first_layer)
    others = []
    if topology_path is not None:
        topology = load_topology(topology_path)
        first_layer += [node.address for node in topology.first_layer]
        others = [node.address for node in topology.nodes]
    return StaticTopology(first_layer, others)


class _MixLinkNode:
    """What every node of a topology has: keys and a mix-link address."""

    # Cached: a client builds routes from these for every packet it sends.
    @cached_property
    def address(self):
        """The 32-byte Nym node address of its mix link."""
        return encode_address(self.host, self.port)

    @property
    def mix_address(self):
        """Its mix link as ``"host:port"``."""
        return host_port_text(self.host, self.port)

    @property
    def identity_base58(self):
        """Its identity in base58."""
        return base58.b58encode(self.identity).decode("ascii")

    @cached_property
    def route_node(self):
        """The :class:`nymprov.sphinx.Node` to put in a route."""
        return Node(self.address, self.sphinx_key)


@dataclass(frozen=True)
class MixNode(_MixLinkNode):
    """
    A mix node of one layer.

    :ivar bytes identity: its 32-byte Ed25519 public key.
    :ivar bytes sphinx_key: its 32-byte X25519 public key.
    :ivar str host: the IP address of its mix link.
    :ivar int port: the port of its mix link.
    :ivar int layer: its layer, from 1.
    """

    identity: bytes
    sphinx_key: bytes
    host: str
    port: int
    layer: int


@dataclass(frozen=True)
class ProviderNode(_MixLinkNode):
    """
    A provider: a mix-link address like a mix node's, plus its client API.

    :ivar bytes identity: its 32-byte Ed25519 public key.
    :ivar bytes sphinx_key: its 32-byte X25519 public key.
    :ivar str host: the IP address of its mix link.
    :ivar int port: the port of its mix link.
    :ivar str client_host: host name or IP of its client API, or ``None``
        if it serves none (its backend keeps no inbox).
    :ivar int client_port: port of its client API, or ``None``.
    :ivar bool client_tls: whether the client API is served over TLS.
    :ivar certificate_fingerprint: the 32-byte SHA-256 of its TLS
        certificate, for clients to pin, or ``None``.
    """

    identity: bytes
    sphinx_key: bytes
    host: str
    port: int
    client_host: str
    client_port: int
    client_tls: bool = True
    certificate_fingerprint: bytes = None

    @property
    def client_address(self):
        """Its client API as ``"host:port"``, or ``None`` if it serves none."""
        if self.client_host is None:
            return None
        return host_port_text(self.client_host, self.client_port)


@implementer(ITopology)
class Topology:
    """
    The mix layers and providers of a mixnet.

    Construction checks that addresses and identities are unique and that
    the layers are numbered 1..n without gaps.

    :param mixnodes: iterable of :class:`MixNode`.
    :param providers: iterable of :class:`ProviderNode`.
    :raises TopologyError: naming the offending entry.
    """

    def __init__(self, mixnodes=(), providers=()):
        self.mixnodes = tuple(mixnodes)
        self.providers = tuple(providers)
        self._by_address = {}
        self._by_identity = {}
        named = [(f"mixnodes[{i}]", n) for i, n in enumerate(self.mixnodes)]
        named += [(f"providers[{i}]", n) for i, n in enumerate(self.providers)]
        for name, node in named:
            if node.address in self._by_address:
                raise TopologyError(f"{name}.mix_address", f"{node.mix_address} is listed twice")
            if node.identity in self._by_identity:
                raise TopologyError(f"{name}.identity", "listed twice")
            self._by_address[node.address] = node
            self._by_identity[node.identity] = node
        layers = {}
        for node in self.mixnodes:
            layers.setdefault(node.layer, []).append(node)
        if sorted(layers) != list(range(1, len(layers) + 1)):
            raise TopologyError("mixnodes", f"layers must be 1..n without gaps, got {sorted(layers)}")
        self.layers = {layer: tuple(layers[layer]) for layer in sorted(layers)}
        self._first_layer = frozenset(n.address for n in layers.get(1, ()))

    @property
    def nodes(self):
        """Every mix node, then every provider."""
        return self.mixnodes + self.providers

    @property
    def first_layer(self):
        """The mix nodes of layer 1."""
        return self.layers.get(1, ())

    def is_first_layer(self, address):
        """ITopology API"""
        return address in self._first_layer

    def is_known_node(self, address):
        """ITopology API"""
        return address in self._by_address

    def by_address(self, address):
        """
        :param bytes address: a 32-byte node address.
        :returns: the node (mix or provider) whose mix link it is.
        :raises KeyError: if no node has it.
        """
        return self._by_address[address]

    def by_identity(self, identity):
        """
        :param identity: a 32-byte identity key, or its base58 text.
        :returns: the node (mix or provider) with that identity.
        :raises KeyError: if no node has it.
        """
        if isinstance(identity, str):
            try:
                identity = base58.b58decode(identity)
            except ValueError:
                raise KeyError(identity) from None
        return self._by_identity[identity]

    def provider(self, identity):
        """
        :returns: the provider with ``identity`` (bytes or base58).
        :raises KeyError: if no provider has it.
        """
        node = self.by_identity(identity)
        if not isinstance(node, ProviderNode):
            raise KeyError(identity)
        return node


# -- reading ------------------------------------------------------------------


def _field(entry, name, where):
    if name not in entry:
        raise TopologyError(f"{where}.{name}", "missing")
    return entry[name]


def _key(entry, name, where):
    value = _field(entry, name, where)
    problem = f"not base58 of {_KEY_LENGTH} bytes"
    if not isinstance(value, str) or not value.isascii():
        raise TopologyError(f"{where}.{name}", problem)
    try:
        raw = base58.b58decode(value)
    except ValueError:
        raise TopologyError(f"{where}.{name}", problem) from None
    if len(raw) != _KEY_LENGTH:
        raise TopologyError(f"{where}.{name}", problem)
    return raw


def _split_host_port(value, where, ip_only):
    if not isinstance(value, str):
        raise TopologyError(where, "expected \"host:port\"")
    if value.startswith("["):
        host, bracket, port = value[1:].partition("]:")
        if not bracket:
            raise TopologyError(where, "expected \"[ipv6]:port\"")
    else:
        host, colon, port = value.rpartition(":")
        if not colon or ":" in host:
            raise TopologyError(where, "expected \"host:port\" (IPv6 in brackets)")
    if not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise TopologyError(where, f"{port!r} is not a port number")
    if ip_only:
        # Sphinx headers carry octets, so a mix link needs an IP literal.
        try:
            host = str(ipaddress.ip_address(host))
        except ValueError:
            raise TopologyError(where, f"{host!r} is not an IP address") from None
    elif not host or not host.isascii() or any(c.isspace() for c in host):
        raise TopologyError(where, f"{host!r} is not a host name or address")
    return host, int(port)


def _entries(document, name):
    value = document.get(name, [])
    if not isinstance(value, list):
        raise TopologyError(name, "expected a list")
    for index, entry in enumerate(value):
        where = f"{name}[{index}]"
        if not isinstance(entry, dict):
            raise TopologyError(where, "expected an object")
        yield where, entry


def _mixnode(entry, where):
    identity = _key(entry, "identity", where)
    sphinx_key = _key(entry, "sphinx_key", where)
    host, port = _split_host_port(
        _field(entry, "mix_address", where), f"{where}.mix_address", ip_only=True
    )
    layer = _field(entry, "layer", where)
    if isinstance(layer, bool) or not isinstance(layer, int) or not 1 <= layer <= MAX_LAYERS:
        raise TopologyError(f"{where}.layer", f"expected a whole number 1..{MAX_LAYERS}")
    return MixNode(identity, sphinx_key, host, port, layer)


def _provider(entry, where):
    identity = _key(entry, "identity", where)
    sphinx_key = _key(entry, "sphinx_key", where)
    host, port = _split_host_port(
        _field(entry, "mix_address", where), f"{where}.mix_address", ip_only=True
    )
    client_host = client_port = None
    if entry.get("client_address") is not None:
        client_host, client_port = _split_host_port(
            entry["client_address"], f"{where}.client_address", ip_only=False
        )
    client_tls = entry.get("client_tls", True)
    if not isinstance(client_tls, bool):
        raise TopologyError(f"{where}.client_tls", "expected true or false")
    fingerprint = entry.get("certificate_fingerprint")
    if fingerprint is not None:
        problem = f"expected {2 * _FINGERPRINT_LENGTH} hex digits"
        if not isinstance(fingerprint, str) or len(fingerprint) != 2 * _FINGERPRINT_LENGTH:
            raise TopologyError(f"{where}.certificate_fingerprint", problem)
        try:
            fingerprint = bytes.fromhex(fingerprint)
        except ValueError:
            raise TopologyError(f"{where}.certificate_fingerprint", problem) from None
    return ProviderNode(
        identity, sphinx_key, host, port, client_host, client_port, client_tls, fingerprint
    )


def parse_topology(document):
    """
    The :class:`Topology` that a decoded JSON ``document`` describes.

    :raises TopologyError: naming the first malformed field.
    """
    if not isinstance(document, dict):
        raise TopologyError("", "a topology is a JSON object")
    version = document.get("version")
    if version != TOPOLOGY_VERSION:
        raise TopologyError("version", f"expected {TOPOLOGY_VERSION}, got {version!r}")
    mixnodes = [_mixnode(entry, where) for where, entry in _entries(document, "mixnodes")]
    providers = [_provider(entry, where) for where, entry in _entries(document, "providers")]
    return Topology(mixnodes, providers)


def load_topology(path_or_bytes):
    """
    Read a topology file.

    :param path_or_bytes: the file's path (``str`` or ``os.PathLike``), or
        its contents as ``bytes``.
    :rtype: Topology
    :raises TopologyError: if the file cannot be read, is not JSON, or a
        field is malformed; the message names the field (and the file).
    """
    if isinstance(path_or_bytes, (bytes, bytearray)):
        return _load(bytes(path_or_bytes))
    path = os.fspath(path_or_bytes)
    try:
        with open(path, "rb") as f:
            contents = f.read(MAX_TOPOLOGY_BYTES + 1)
    except OSError as e:
        raise TopologyError("", f"{path}: cannot read: {e.strerror}") from None
    try:
        return _load(contents)
    except TopologyError as e:
        raise TopologyError(e.field, f"{e.problem} (in {path})") from None


def _load(contents):
    if len(contents) > MAX_TOPOLOGY_BYTES:
        raise TopologyError("", f"larger than {MAX_TOPOLOGY_BYTES} bytes")
    try:
        document = json.loads(contents.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise TopologyError("", f"not JSON: {e}") from None
    except RecursionError:
        raise TopologyError("", "not JSON: nested too deeply") from None
    return parse_topology(document)


# -- writing ------------------------------------------------------------------


def topology_document(topology):
    """The JSON-ready ``dict`` of ``topology``."""

    def common(node):
        return {
            "identity": node.identity_base58,
            "sphinx_key": base58.b58encode(node.sphinx_key).decode("ascii"),
            "mix_address": node.mix_address,
        }

    mixnodes = [dict(common(n), layer=n.layer) for n in topology.mixnodes]
    providers = []
    for node in topology.providers:
        entry = common(node)
        if node.client_address is not None:
            entry.update(client_address=node.client_address, client_tls=node.client_tls)
        if node.certificate_fingerprint is not None:
            entry["certificate_fingerprint"] = node.certificate_fingerprint.hex()
        providers.append(entry)
    return {"version": TOPOLOGY_VERSION, "mixnodes": mixnodes, "providers": providers}


def dump_topology(topology, path=None):
    """
    Encode ``topology`` as a topology file; write it to ``path`` if given
    (atomically, readable by all: it holds only public keys).

    :returns: the file's contents as ``bytes``.
    """
    contents = (json.dumps(topology_document(topology), indent=2) + "\n").encode("utf-8")
    if path is not None:
        from nymprov.keys import write_file_atomically

        write_file_atomically(os.fspath(path), contents, mode=0o644)
    return contents
