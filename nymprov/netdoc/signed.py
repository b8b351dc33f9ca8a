"""
The signed envelope that carries a descriptor or a network document, and
the checks that read the JSON inside it.

An envelope is the JSON object ``{"signed": TEXT, "signature": HEX}``:
``TEXT`` is the payload's JSON text, kept as a string so that the signature
covers exact bytes and no canonical JSON is needed to check it; ``HEX`` is
the 64-byte Ed25519 signature of ``CONTEXT + b"\\n" + TEXT.encode("utf-8")``,
where ``CONTEXT`` names what is signed, so that a signature made for one
kind of payload is never valid for another.
"""

import json

import base58
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from nymprov.net.addresses import parse_host_port
from nymprov.netdoc.errors import BadSignature, MalformedDocument

KEY_LENGTH = 32
SIGNATURE_LENGTH = 64


def _message(context, text):
    return context + b"\n" + text.encode("utf-8")


def seal(payload, signing_key, context):
    """
    :param dict payload: the JSON-ready payload.
    :param signing_key: a ``nacl.signing.SigningKey``.
    :param bytes context: what is signed, e.g. ``b"nymprov-descriptor-v1"``.
    :returns: the envelope as UTF-8 JSON bytes.
    """
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    signature = signing_key.sign(_message(context, text)).signature
    return json.dumps({"signed": text, "signature": signature.hex()}).encode("utf-8")


def decode_json(contents, max_bytes, what):
    """
    :returns: the JSON value in ``contents`` (bytes).
    :raises MalformedDocument: if too large or not JSON.
    """
    if len(contents) > max_bytes:
        raise MalformedDocument(f"{what}: larger than {max_bytes} bytes")
    try:
        return json.loads(bytes(contents).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise MalformedDocument(f"{what}: not JSON: {e}") from None
    except RecursionError:
        raise MalformedDocument(f"{what}: not JSON: nested too deeply") from None


def open_envelope(contents, max_bytes, what):
    """
    Split an envelope without checking its signature (the key that must
    have made it is inside the payload, or pinned by the caller).

    :returns: ``(payload dict, text, signature bytes)``.
    :raises MalformedDocument: naming the field.
    """
    envelope = decode_json(contents, max_bytes, what)
    if not isinstance(envelope, dict):
        raise MalformedDocument(f"{what}: expected an object with signed and signature")
    text = envelope.get("signed")
    if not isinstance(text, str):
        raise MalformedDocument("signed: expected the payload's JSON text")
    signature = envelope.get("signature")
    if not (isinstance(signature, str) and len(signature) == 2 * SIGNATURE_LENGTH):
        raise MalformedDocument(f"signature: expected {2 * SIGNATURE_LENGTH} hex digits")
    try:
        signature = bytes.fromhex(signature)
    except ValueError:
        raise MalformedDocument(f"signature: expected {2 * SIGNATURE_LENGTH} hex digits") from None
    payload = decode_json(text.encode("utf-8"), max_bytes, "signed")
    if not isinstance(payload, dict):
        raise MalformedDocument("signed: expected a JSON object")
    return payload, text, signature


def check_signature(public_key, context, text, signature):
    """
    :raises BadSignature: unless ``signature`` is ``public_key``'s (32
        bytes, Ed25519) over ``text`` in ``context``.
    """
    try:
        VerifyKey(public_key).verify(_message(context, text), signature)
    except (BadSignatureError, ValueError):
        raise BadSignature("the signature does not verify") from None


class Fields:
    """
    Typed reads from one JSON object; every error names the field's path.

    :param dict entry: the object.
    :param str where: its path, e.g. ``"mixnodes[2]"`` (``""`` at the top).
    """

    def __init__(self, entry, where=""):
        if not isinstance(entry, dict):
            raise MalformedDocument(f"{where or 'document'}: expected an object")
        self.entry = entry
        self.where = where

    def path(self, name):
        return f"{self.where}.{name}" if self.where else name

    def raw(self, name, default=KeyError):
        if name not in self.entry:
            if default is KeyError:
                raise MalformedDocument(f"{self.path(name)}: missing")
            return default
        return self.entry[name]

    def integer(self, name, minimum=None, maximum=None, default=KeyError):
        value = self.raw(name, default)
        if value is default and default is not KeyError:
            return value
        if isinstance(value, bool) or not isinstance(value, int):
            raise MalformedDocument(f"{self.path(name)}: expected a whole number")
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            raise MalformedDocument(f"{self.path(name)}: {value} is out of range")
        return value

    def number(self, name, minimum=0):
        value = self.raw(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
            raise MalformedDocument(f"{self.path(name)}: expected a number from {minimum}")
        return value

    def text(self, name, max_length=256, default=KeyError):
        value = self.raw(name, default)
        if value is default and default is not KeyError:
            return value
        if not isinstance(value, str) or len(value) > max_length:
            raise MalformedDocument(f"{self.path(name)}: expected text of at most {max_length} characters")
        return value

    def boolean(self, name, default=KeyError):
        value = self.raw(name, default)
        if not isinstance(value, bool):
            raise MalformedDocument(f"{self.path(name)}: expected true or false")
        return value

    def key(self, name):
        return key_from_text(self.raw(name), self.path(name))

    def address(self, name, ip_only=True):
        """``(host, port)``; a host name is allowed unless ``ip_only``."""
        value = self.raw(name)
        if not isinstance(value, str) or len(value) > 300:
            raise MalformedDocument(f"{self.path(name)}: expected \"host:port\"")
        try:
            return parse_host_port(value)
        except ValueError as e:
            problem = str(e)
        host, colon, port = value.rpartition(":")
        if ip_only or not colon or ":" in host or "[" in host or not host.isascii():
            raise MalformedDocument(f"{self.path(name)}: {problem}")
        if any(c.isspace() for c in host) or not (port.isascii() and port.isdigit()):
            raise MalformedDocument(f"{self.path(name)}: {problem}")
        if not 0 < int(port) < 65536:
            raise MalformedDocument(f"{self.path(name)}: {port!r} is not a port number")
        return host, int(port)

    def objects(self, name, max_count):
        value = self.raw(name)
        if not isinstance(value, list) or len(value) > max_count:
            raise MalformedDocument(f"{self.path(name)}: expected a list of at most {max_count}")
        return [Fields(item, f"{self.path(name)}[{i}]") for i, item in enumerate(value)]


def key_text(raw):
    """:returns: a 32-byte key in base58, as Nym prints keys."""
    return base58.b58encode(raw).decode("ascii")


def key_from_text(value, where):
    """
    :returns: the 32 bytes that the base58 ``value`` encodes.
    :raises MalformedDocument: naming ``where``.
    """
    problem = f"{where}: not base58 of {KEY_LENGTH} bytes"
    if not isinstance(value, str) or not value.isascii() or len(value) > 64:
        raise MalformedDocument(problem)
    try:
        raw = base58.b58decode(value)
    except ValueError:
        raise MalformedDocument(problem) from None
    if len(raw) != KEY_LENGTH:
        raise MalformedDocument(problem)
    return raw
