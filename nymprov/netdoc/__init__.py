"""
The network as the directory publishes it: signed node descriptors, signed
network documents, epochs, and the HTTP clients that publish the one and
fetch the other.  The formats are documented field by field in
``doc/directory.md``.
"""

from nymprov.netdoc.descriptor import (
    DESCRIPTOR_VERSION,
    Descriptor,
    EpochKey,
    parse_descriptor,
    sign_descriptor,
    verify_descriptor,
)
from nymprov.netdoc.document import (
    DOCUMENT_VERSION,
    NetworkDocument,
    parse_document,
    sign_document,
    verify_document,
)
from nymprov.netdoc.epochs import Epochs
from nymprov.netdoc.errors import (
    BadSignature,
    DocumentError,
    MalformedDocument,
    WrongDirectory,
    WrongEpoch,
)

__all__ = [
    "BadSignature",
    "DESCRIPTOR_VERSION",
    "DOCUMENT_VERSION",
    "Descriptor",
    "DocumentError",
    "EpochKey",
    "Epochs",
    "MalformedDocument",
    "NetworkDocument",
    "WrongDirectory",
    "WrongEpoch",
    "parse_descriptor",
    "parse_document",
    "sign_descriptor",
    "sign_document",
    "verify_descriptor",
    "verify_document",
]
