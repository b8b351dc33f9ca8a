"""Whether a node is alive and ready for traffic, and if not, why."""

from dataclasses import dataclass


@dataclass(frozen=True)
class Health:
    """
    :ivar live: the process runs and serves (a supervisor need not restart it).
    :ivar ready: it takes traffic (a load balancer may send it some).
    :ivar reason: why it is not ready; empty when it is.
    """

    live: bool
    ready: bool
    reason: str = ""

    @classmethod
    def ready_now(cls):
        return cls(True, True)

    @classmethod
    def not_ready(cls, reason):
        return cls(True, False, reason)
