"""
A node's descriptor: what it tells the directory about itself, signed with
its Ed25519 identity key (see ``doc/directory.md`` for every field).
"""

from dataclasses import dataclass, field

from nymprov.net.addresses import host_port_text
from nymprov.netdoc.errors import MalformedDocument
from nymprov.netdoc.signed import (
    Fields,
    check_signature,
    key_text,
    open_envelope,
    seal,
)
from nymprov.sphinx.params import PacketSize

DESCRIPTOR_VERSION = 1
DESCRIPTOR_CONTEXT = b"nymprov-descriptor-v1"

#: A descriptor is a few hundred bytes; anything this large is not one.
MAX_DESCRIPTOR_BYTES = 16 * 1024

#: A node announces at most its current, next and previous keys.
MAX_EPOCH_KEYS = 3

#: Mix layers are 1..4: a Sphinx route has at most five hops, the last a
#: provider.
MAX_LAYER = 4

ROLES = ("mix", "provider")

_SIZE_NAMES = {size.name.lower(): size for size in PacketSize}


@dataclass(frozen=True)
class EpochKey:
    """
    A Sphinx public key and the epoch in which packets are built for it.

    :ivar int epoch: the epoch number.
    :ivar bytes key: the 32-byte X25519 public key.
    """

    epoch: int
    key: bytes


@dataclass(frozen=True)
class Descriptor:
    """
    What one node says about itself.

    :ivar bytes identity: its 32-byte Ed25519 public key.
    :ivar str role: ``"mix"`` or ``"provider"``.
    :ivar layer: its mix layer (1..4), or ``None`` for a provider.
    :ivar str mix_host: IP of its mix link.
    :ivar int mix_port: port of its mix link.
    :ivar int timestamp: when it was made, seconds since the Unix epoch.
    :ivar tuple sphinx_keys: :class:`EpochKey` entries, by epoch.
    :ivar tuple packet_sizes: the :class:`PacketSize` values it accepts.
    :ivar str software_version: the node's software version.
    :ivar client_host: a provider's client API host, else ``None`` (a
        mix, or a provider whose backend keeps no inbox).
    :ivar client_port: a provider's client API port, else ``None``.
    :ivar bool client_tls: whether that API is served over TLS.
    :ivar certificate_fingerprint: SHA-256 of a provider's TLS
        certificate (32 bytes), or ``None``.
    """

    identity: bytes
    role: str
    layer: object
    mix_host: str
    mix_port: int
    timestamp: int
    sphinx_keys: tuple
    packet_sizes: tuple = tuple(PacketSize)
    software_version: str = ""
    client_host: object = None
    client_port: object = None
    client_tls: bool = True
    certificate_fingerprint: object = field(default=None)

    @property
    def mix_address(self):
        """The mix link as ``"ip:port"``."""
        return host_port_text(self.mix_host, self.mix_port)

    @property
    def identity_base58(self):
        return key_text(self.identity)

    def key_for(self, epoch):
        """:returns: the Sphinx public key for ``epoch``, or ``None``."""
        for entry in self.sphinx_keys:
            if entry.epoch == epoch:
                return entry.key
        return None

    def to_json(self):
        """The JSON-ready payload."""
        payload = {
            "version": DESCRIPTOR_VERSION,
            "identity": key_text(self.identity),
            "role": self.role,
            "mix_address": self.mix_address,
            "timestamp": self.timestamp,
            "sphinx_keys": [{"epoch": k.epoch, "key": key_text(k.key)} for k in self.sphinx_keys],
            "packet_sizes": [size.name.lower() for size in self.packet_sizes],
            "software_version": self.software_version,
        }
        if self.role == "mix":
            payload["layer"] = self.layer
        elif self.client_host is not None:
            # A provider whose backend keeps no inbox has no client API.
            payload["client_address"] = host_port_text(self.client_host, self.client_port)
            payload["client_tls"] = self.client_tls
            if self.certificate_fingerprint is not None:
                payload["certificate_fingerprint"] = self.certificate_fingerprint.hex()
        return payload


def sign_descriptor(descriptor, identity_key):
    """
    :param identity_key: the node's ``nacl.signing.SigningKey``; its public
        half must be ``descriptor.identity``.
    :returns: the signed descriptor, as the bytes a node POSTs.
    """
    if identity_key.verify_key.encode() != descriptor.identity:
        raise ValueError("a descriptor is signed with its own identity key")
    return seal(descriptor.to_json(), identity_key, DESCRIPTOR_CONTEXT)


def parse_descriptor(payload):
    """
    :param dict payload: a descriptor's decoded JSON.
    :rtype: Descriptor
    :raises MalformedDocument: naming the first bad field.
    """
    fields = Fields(payload)
    version = fields.raw("version")
    if version != DESCRIPTOR_VERSION:
        raise MalformedDocument(f"version: expected {DESCRIPTOR_VERSION}, got {version!r}")
    role = fields.raw("role")
    if role not in ROLES:
        raise MalformedDocument(f"role: expected one of {', '.join(ROLES)}")
    mix_host, mix_port = fields.address("mix_address")
    keys = []
    for entry in fields.objects("sphinx_keys", MAX_EPOCH_KEYS):
        keys.append(EpochKey(entry.integer("epoch", minimum=0, maximum=2**32 - 1), entry.key("key")))
    epochs = [k.epoch for k in keys]
    if not keys or len(set(epochs)) != len(epochs):
        raise MalformedDocument("sphinx_keys: expected 1 to 3 keys for distinct epochs")
    sizes = fields.raw("packet_sizes")
    if not isinstance(sizes, list) or not sizes or len(sizes) > len(_SIZE_NAMES):
        raise MalformedDocument("packet_sizes: expected a list of size names")
    try:
        packet_sizes = tuple(_SIZE_NAMES[name] for name in sizes)
    except (KeyError, TypeError):
        raise MalformedDocument(f"packet_sizes: expected names among {', '.join(_SIZE_NAMES)}") from None
    common = dict(
        identity=fields.key("identity"),
        role=role,
        mix_host=mix_host,
        mix_port=mix_port,
        timestamp=fields.integer("timestamp", minimum=0, maximum=2**53),
        sphinx_keys=tuple(sorted(keys, key=lambda k: k.epoch)),
        packet_sizes=packet_sizes,
        software_version=fields.text("software_version", max_length=64),
    )
    if role == "mix":
        return Descriptor(layer=fields.integer("layer", minimum=1, maximum=MAX_LAYER), **common)
    if fields.raw("client_address", None) is None:
        # A service provider: no client API, nothing for clients to pin.
        return Descriptor(layer=None, **common)
    client_host, client_port = fields.address("client_address", ip_only=False)
    fingerprint = fields.raw("certificate_fingerprint", None)
    if fingerprint is not None:
        problem = "certificate_fingerprint: expected 64 hex digits"
        if not isinstance(fingerprint, str) or len(fingerprint) != 64:
            raise MalformedDocument(problem)
        try:
            fingerprint = bytes.fromhex(fingerprint)
        except ValueError:
            raise MalformedDocument(problem) from None
    return Descriptor(
        layer=None,
        client_host=client_host,
        client_port=client_port,
        client_tls=fields.boolean("client_tls"),
        certificate_fingerprint=fingerprint,
        **common,
    )


def verify_descriptor(contents):
    """
    Decode a signed descriptor and check that its own identity key signed it.

    :param bytes contents: the envelope, as POSTed.
    :returns: ``(descriptor, contents)``.
    :raises MalformedDocument: for bad JSON or a bad field.
    :raises BadSignature: if the identity key it names did not sign it.
    """
    payload, text, signature = open_envelope(contents, MAX_DESCRIPTOR_BYTES, "descriptor")
    descriptor = parse_descriptor(payload)
    check_signature(descriptor.identity, DESCRIPTOR_CONTEXT, text, signature)
    return descriptor
