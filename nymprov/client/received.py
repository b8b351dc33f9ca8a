"""A whole message as the client hands it to its user."""

from dataclasses import dataclass


@dataclass(frozen=True)
class ReceivedMessage:
    """
    A whole message that arrived.

    :ivar data: its bytes.
    :ivar message_id: the sender's 16-byte id of it.
    :ivar is_reply: whether it answers one of this client's messages.
    :ivar in_reply_to: for a reply, the hint of the message it answers
        (the ``reply_hint`` :meth:`NymClient.send` returned); else ``None``.
    :ivar surbs: SURBs to reply through (consumed by :meth:`NymClient.reply`).
    """

    data: bytes
    message_id: bytes
    is_reply: bool = False
    in_reply_to: bytes = None
    surbs: list = None
    reply_hint: bytes = None
    reply_public: bytes = None
