"""Splitting a message into packet-sized fragments and putting it back together."""

import struct
from collections import OrderedDict
from dataclasses import dataclass

MESSAGE_ID_LENGTH = 16
_HEAD = struct.Struct(">16sHH")
FRAGMENT_HEADER_LENGTH = _HEAD.size  # 20
MAX_FRAGMENTS = 0xFFFF


class MalformedFragment(ValueError):
    """Bytes that are not a fragment, or disagree with their siblings."""

    reason = "malformed_fragment"


@dataclass(frozen=True)
class Fragment:
    """
    One piece of a message: ``message_id(16) || index u16 || count u16 || chunk``.
    """

    message_id: bytes
    index: int
    count: int
    chunk: bytes

    def to_bytes(self):
        """The fragment's encoding."""
        return _HEAD.pack(self.message_id, self.index, self.count) + self.chunk

    @classmethod
    def from_bytes(cls, data):
        """:raises MalformedFragment: if ``data`` is not a fragment."""
        if len(data) < FRAGMENT_HEADER_LENGTH:
            raise MalformedFragment("shorter than a fragment header")
        message_id, index, count = _HEAD.unpack_from(data)
        if count == 0 or index >= count:
            raise MalformedFragment(f"fragment {index} of {count}")
        return cls(message_id, index, count, bytes(data[FRAGMENT_HEADER_LENGTH:]))


def split_message(message_id, data, chunk_size):
    """
    The fragments of ``data``; an empty message is one empty fragment.

    :raises ValueError: if ``data`` needs more than 65535 fragments.
    """
    if len(message_id) != MESSAGE_ID_LENGTH or chunk_size < 1:
        raise ValueError("a 16-byte message id and a positive chunk size")
    count = max(1, -(-len(data) // chunk_size))
    if count > MAX_FRAGMENTS:
        raise ValueError(f"message too long: {len(data)} bytes")
    return [
        Fragment(message_id, i, count, bytes(data[i * chunk_size : (i + 1) * chunk_size]))
        for i in range(count)
    ]


class Reassembler:
    """
    Collects fragments until a message is whole; copies are ignored, also
    after the message was completed (its id is remembered).

    Memory is bounded: at most ``max_partial`` incomplete messages (the
    oldest is dropped first) and ``remember`` completed ids.
    """

    def __init__(self, max_partial=1000, remember=100_000):
        self._partial = OrderedDict()  # message_id -> (count, {index: chunk})
        self._done = OrderedDict()  # message_id -> None, oldest first
        self._max_partial = max_partial
        self._remember = remember

    @property
    def partial_count(self):
        """How many messages are still missing fragments."""
        return len(self._partial)

    def add(self, fragment):
        """
        :returns: the whole message once its last fragment arrived, else
            ``None`` (also for a copy of a fragment already seen).
        :raises MalformedFragment: if ``fragment`` disagrees with the
            fragments of its message seen before (nothing changes).
        """
        if fragment.message_id in self._done:
            return None
        count, chunks = self._partial.get(fragment.message_id, (fragment.count, {}))
        if count != fragment.count:
            raise MalformedFragment("fragment count differs from its siblings'")
        if fragment.index in chunks:
            return None
        chunks[fragment.index] = fragment.chunk
        if len(chunks) < count:
            self._partial[fragment.message_id] = (count, chunks)
            while len(self._partial) > self._max_partial:
                self._partial.popitem(last=False)
            return None
        self._partial.pop(fragment.message_id, None)
        self._done[fragment.message_id] = None
        while len(self._done) > self._remember:
            self._done.popitem(last=False)
        return b"".join(chunks[i] for i in range(count))

    def state(self):
        """A JSON-ready snapshot, for clients that keep it between runs."""
        return {
            "partial": [
                [mid.hex(), count, {str(i): c.hex() for i, c in chunks.items()}]
                for mid, (count, chunks) in self._partial.items()
            ],
            "done": [mid.hex() for mid in self._done],
        }

    @classmethod
    def from_state(cls, state, **kwargs):
        """
        The reassembler of a :meth:`state` snapshot.

        :raises MalformedFragment: if the snapshot is malformed.
        """
        reassembler = cls(**kwargs)
        try:
            for mid in state["done"]:
                reassembler._done[bytes.fromhex(mid)] = None
            for mid, count, chunks in state["partial"]:
                for index, chunk in chunks.items():
                    reassembler.add(Fragment(bytes.fromhex(mid), int(index), count, bytes.fromhex(chunk)))
        except (KeyError, TypeError, ValueError, struct.error) as e:
            raise MalformedFragment(f"bad saved state: {e}") from None
        return reassembler
