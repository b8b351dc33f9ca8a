"""
End-to-end encryption of fragments, and the record a whole message carries.

A data body (what the recipient's provider stores, opaque to it) is::

    body = hint(16) || SealedBox(recipient_key, fragment)

``SealedBox`` (PyNaCl: an ephemeral X25519 key, XSalsa20-Poly1305) gives
each fragment its own ephemeral key, so providers only ever hold
ciphertext.  For an ordinary message ``hint`` is random and the recipient's
long-term encryption key opens it.  For a reply it names a one-time key:
the original sender derived ``reply_key = BLAKE2b(key=its secret, hint)``
and sent its public half with its SURBs, so the replier learns nothing that
identifies the sender, and the sender recomputes the secret from the hint.

An ACK body is the 16-byte ACK identifier alone (shorter than any sealed
body, which is at least 64 bytes).

The reassembled message is a record::

    record = kind u8 || surb_count u8
             || [reply_hint(16) || reply_public(32)]   if surb_count > 0
             || surb_count x (length u16 || SURB bytes)
             || data
"""

import struct
from dataclasses import dataclass

from nacl.bindings import crypto_box_SEALBYTES, crypto_generichash_blake2b_salt_personal
from nacl.exceptions import CryptoError
from nacl.public import PrivateKey, PublicKey, SealedBox

from nymprov.wire.fragments import FRAGMENT_HEADER_LENGTH
from nymprov.wire.envelope import MAX_BODY_WITH_ACK

HINT_LENGTH = 16
ACK_ID_LENGTH = 16
#: Message bytes per fragment of a regular packet that carries a SURB-ACK.
CHUNK_SIZE = MAX_BODY_WITH_ACK - HINT_LENGTH - crypto_box_SEALBYTES - FRAGMENT_HEADER_LENGTH

KIND_MESSAGE = 1
KIND_REPLY = 2
KIND_COVER = 3
_KINDS = (KIND_MESSAGE, KIND_REPLY, KIND_COVER)
_PERSON = b"nymprov-reply-k1"  # 16 bytes, BLAKE2b personalisation


class UnreadableBody(ValueError):
    """A body that none of the client's keys opens, or a malformed record."""

    reason = "unreadable"


def reply_private_key(encryption_key, hint):
    """The one-time X25519 key that replies naming ``hint`` are sealed to."""
    seed = crypto_generichash_blake2b_salt_personal(
        hint, digest_size=32, key=bytes(encryption_key), person=_PERSON
    )
    return PrivateKey(seed)


def seal(public_key, hint, fragment_bytes):
    """:returns: a data body for ``public_key`` (32 bytes)."""
    return hint + SealedBox(PublicKey(public_key)).encrypt(fragment_bytes)


def open_body(encryption_key, body):
    """
    :param encryption_key: the recipient's ``nacl.public.PrivateKey``.
    :returns: ``(fragment_bytes, hint, is_reply)``.
    :raises UnreadableBody: if neither the long-term nor the hint's reply
        key opens it.
    """
    if len(body) < HINT_LENGTH + crypto_box_SEALBYTES:
        raise UnreadableBody("too short for a sealed body")
    hint, sealed = body[:HINT_LENGTH], body[HINT_LENGTH:]
    try:
        return SealedBox(encryption_key).decrypt(sealed), hint, False
    except CryptoError:
        pass
    # Derived only now: making the reply key costs a third of opening.
    try:
        return SealedBox(reply_private_key(encryption_key, hint)).decrypt(sealed), hint, True
    except CryptoError:
        raise UnreadableBody("no key opens it") from None


@dataclass(frozen=True)
class Record:
    """
    A whole message as its sender wrote it.

    :ivar kind: ``KIND_MESSAGE``, ``KIND_REPLY`` or ``KIND_COVER``.
    :ivar data: the application's bytes.
    :ivar surbs: SURB encodings the recipient may reply through.
    :ivar reply_hint: the hint replies carry, or ``None``.
    :ivar reply_public: the 32-byte key replies are sealed to, or ``None``.
    """

    kind: int
    data: bytes
    surbs: tuple = ()
    reply_hint: bytes = None
    reply_public: bytes = None

    def to_bytes(self):
        """The record's encoding."""
        if len(self.surbs) > 255:
            raise ValueError("at most 255 SURBs")
        parts = [bytes([self.kind, len(self.surbs)])]
        if self.surbs:
            if len(self.reply_hint or b"") != HINT_LENGTH or len(self.reply_public or b"") != 32:
                raise ValueError("SURBs need a 16-byte reply hint and a 32-byte reply key")
            parts += [self.reply_hint, self.reply_public]
            parts += [struct.pack(">H", len(s)) + s for s in self.surbs]
        parts.append(self.data)
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, data):
        """:raises UnreadableBody: if ``data`` is not a record."""
        if len(data) < 2 or data[0] not in _KINDS:
            raise UnreadableBody("not a record")
        kind, count = data[0], data[1]
        offset, hint, public, surbs = 2, None, None, []
        if count:
            if len(data) < offset + HINT_LENGTH + 32:
                raise UnreadableBody("record too short for its reply key")
            hint = bytes(data[offset : offset + HINT_LENGTH])
            public = bytes(data[offset + HINT_LENGTH : offset + HINT_LENGTH + 32])
            offset += HINT_LENGTH + 32
        for _ in range(count):
            if len(data) < offset + 2:
                raise UnreadableBody("record too short for its SURBs")
            (length,) = struct.unpack_from(">H", data, offset)
            if len(data) < offset + 2 + length:
                raise UnreadableBody("record too short for its SURBs")
            surbs.append(bytes(data[offset + 2 : offset + 2 + length]))
            offset += 2 + length
        return cls(kind, bytes(data[offset:]), tuple(surbs), hint, public)
