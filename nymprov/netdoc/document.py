"""
The network document: the nodes of one epoch with the Sphinx keys valid in
it, signed by the directory (see ``doc/directory.md`` for every field).
Nodes and clients pin the directory's key and refuse any other signer.
"""

from dataclasses import dataclass

from nymprov.netdoc.descriptor import parse_descriptor
from nymprov.netdoc.errors import MalformedDocument, WrongDirectory, WrongEpoch
from nymprov.netdoc.signed import Fields, check_signature, key_text, open_envelope, seal
from nymprov.topology import MixNode, ProviderNode, Topology

DOCUMENT_VERSION = 1
DOCUMENT_CONTEXT = b"nymprov-network-document-v1"

#: Refused unread beyond this: thousands of nodes fit in a few megabytes.
MAX_DOCUMENT_BYTES = 16 * 1024 * 1024
MAX_NODES = 10_000
#: Shaping rates a directory may publish (optional parameters): λ_P, λ_L, λ_D.
RATE_NAMES = ("send_rate", "loop_rate", "drop_rate")
#: Far above any sane rate: a client must not be told to flood its link.
MAX_RATE = 10_000.0


@dataclass(frozen=True)
class NetworkDocument:
    """
    :ivar bytes directory: the 32-byte Ed25519 key of the directory.
    :ivar int epoch: the epoch it describes.
    :ivar float epoch_start: when that epoch begins (Unix seconds).
    :ivar float epoch_end: when it ends.
    :ivar int generated: when the directory made it.
    :ivar dict parameters: the directory's parameters (``epoch_length``,
        ``epoch_zero``, ``expiry``, ``grace`` and, when the directory
        publishes them, the shaping rates of ``RATE_NAMES``), as numbers.
    :ivar tuple nodes: the nodes' :class:`nymprov.netdoc.Descriptor`
        entries, each with a Sphinx key for ``epoch``.
    :ivar bytes contents: the signed envelope it was read from (or made as).
    """

    directory: bytes
    epoch: int
    epoch_start: float
    epoch_end: float
    generated: int
    parameters: dict
    nodes: tuple
    contents: bytes = b""

    @property
    def mixnodes(self):
        return tuple(n for n in self.nodes if n.role == "mix")

    @property
    def providers(self):
        return tuple(n for n in self.nodes if n.role == "provider")

    def topology(self, epoch=None):
        """
        The :class:`nymprov.topology.Topology` of the nodes with a key for
        ``epoch`` (this document's by default; the next one's too, since
        nodes announce it ahead), each with that key.

        :raises TopologyError: if the layers it leaves are not 1..n.
        """
        epoch = self.epoch if epoch is None else epoch
        mixnodes, providers = [], []
        for node in self.nodes:
            key = node.key_for(epoch)
            if key is None:
                continue
            if node.role == "mix":
                mixnodes.append(MixNode(node.identity, key, node.mix_host, node.mix_port, node.layer))
            else:
                providers.append(
                    ProviderNode(
                        node.identity, key, node.mix_host, node.mix_port, node.client_host,
                        node.client_port, node.client_tls, node.certificate_fingerprint,
                    )
                )
        return Topology(mixnodes, providers)

    def to_json(self):
        """The JSON-ready payload."""
        return {
            "version": DOCUMENT_VERSION,
            "directory": key_text(self.directory),
            "epoch": self.epoch,
            "epoch_start": self.epoch_start,
            "epoch_end": self.epoch_end,
            "generated": self.generated,
            "parameters": dict(self.parameters),
            "nodes": [node.to_json() for node in self.nodes],
        }


def sign_document(document, directory_key):
    """
    :param directory_key: the directory's ``nacl.signing.SigningKey``.
    :returns: the signed envelope, as served.
    """
    return seal(document.to_json(), directory_key, DOCUMENT_CONTEXT)


def parse_document(payload, contents=b""):
    """
    :rtype: NetworkDocument
    :raises MalformedDocument: naming the first bad field.
    """
    fields = Fields(payload)
    version = fields.raw("version")
    if version != DOCUMENT_VERSION:
        raise MalformedDocument(f"version: expected {DOCUMENT_VERSION}, got {version!r}")
    parameters = Fields(fields.raw("parameters"), "parameters")
    values = {name: parameters.number(name) for name in ("epoch_length", "epoch_zero", "expiry", "grace")}
    values.update(_rates(parameters))
    nodes = []
    for entry in fields.objects("nodes", MAX_NODES):
        try:
            nodes.append(parse_descriptor(entry.entry))
        except MalformedDocument as e:
            raise MalformedDocument(f"{entry.where}.{e}") from None
    document = NetworkDocument(
        directory=fields.key("directory"),
        epoch=fields.integer("epoch", minimum=0, maximum=2**32 - 1),
        epoch_start=fields.number("epoch_start"),
        epoch_end=fields.number("epoch_end"),
        generated=fields.integer("generated", minimum=0, maximum=2**53),
        parameters=values,
        nodes=tuple(nodes),
        contents=bytes(contents),
    )
    seen = set()
    for node in document.nodes:
        if node.identity in seen:
            raise MalformedDocument("nodes: an identity is listed twice")
        seen.add(node.identity)
    return document


def _rates(parameters):
    """The published shaping rates among ``parameters`` (each optional)."""
    found = {}
    for name in RATE_NAMES:
        if parameters.raw(name, None) is None:
            continue
        value = parameters.number(name)
        # NaN passes a comparison with the minimum; JSON's parser gives it.
        if not (value <= MAX_RATE) or (name == "send_rate" and not value > 0):
            raise MalformedDocument(f"parameters.{name}: expected packets per second up to {MAX_RATE:g}"
                                    + (", above 0" if name == "send_rate" else ""))
        found[name] = value
    return found


def verify_document(contents, directory_key, epoch=None):
    """
    Check a network document against the pinned directory key.

    :param bytes contents: the signed envelope, as served.
    :param bytes directory_key: the pinned 32-byte Ed25519 key.
    :param epoch: the epoch asked for, or ``None`` for any.
    :rtype: NetworkDocument
    :raises MalformedDocument: for bad JSON or a bad field.
    :raises WrongDirectory: if another directory made it.
    :raises BadSignature: if the pinned key did not sign it.
    :raises WrongEpoch: if it is for another epoch than ``epoch``.
    """
    payload, text, signature = open_envelope(contents, MAX_DOCUMENT_BYTES, "document")
    signer = Fields(payload).key("directory")
    if signer != directory_key:
        raise WrongDirectory(f"signed by {key_text(signer)}, not the pinned {key_text(directory_key)}")
    check_signature(directory_key, DOCUMENT_CONTEXT, text, signature)
    document = parse_document(payload, contents)
    if epoch is not None and document.epoch != epoch:
        raise WrongEpoch(f"document for epoch {document.epoch}, expected {epoch}")
    return document



