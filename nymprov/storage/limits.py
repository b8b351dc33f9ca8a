"""
The limits every inbox store enforces, as one validated value.
"""

from dataclasses import dataclass, fields

MiB = 1024 * 1024
DAY = 24 * 60 * 60.0  # seconds


@dataclass(frozen=True)
class StoreLimits:
    """
    Per-client quotas, retention and group-commit tuning of an inbox store.

    :ivar max_messages: most messages one client's inbox holds.
    :ivar max_bytes: most message bytes one client's inbox holds.
    :ivar message_ttl: seconds a message is kept before ``expire`` drops it.
    :ivar slot_size: largest message accepted, in bytes; a longer one is
        refused with ``MessageTooLarge``.
    :ivar commit_batch: most appends written in one transaction.
    :ivar commit_delay: seconds the first append of a batch may wait for
        company before its transaction starts; also the least time between
        the starts of two commits while appends keep coming (unless a batch
        is full), which bounds the fsyncs per second.
    """

    max_messages: int = 10_000
    max_bytes: int = 64 * MiB
    message_ttl: float = 7 * DAY
    slot_size: int = 2048
    commit_batch: int = 512
    # 30 ms: at 6,000 appends/s, ~200 per commit; beside 10 ms it measured
    # 4-14% more ingest in three paired runs, and an append waits at most
    # this long before its commit starts (its SURB-ACK waits with it).
    commit_delay: float = 0.03

    def __post_init__(self):
        for field in fields(self):
            value = getattr(self, field.name)
            # bool is an int subclass, but True is never a meaningful limit.
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{field.name} must be a number, not {value!r}")
            if field.type is int and not isinstance(value, int):
                raise ValueError(f"{field.name} must be an integer, not {value!r}")
            if value != value or value in (float("inf"), float("-inf")):
                raise ValueError(f"{field.name} must be finite, not {value!r}")
        for name in ("max_messages", "max_bytes", "slot_size", "commit_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.message_ttl <= 0:
            raise ValueError("message_ttl must be positive")
        if self.commit_delay < 0:
            raise ValueError("commit_delay must not be negative")
