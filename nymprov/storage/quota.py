"""
Per-client inbox accounting, kept in memory by every store.
"""

from nymprov.errors import InboxFull, MessageTooLarge, UnknownDestination


def check_bytes(name, value):
    """
    Refuse anything but ``bytes`` for ``name`` with a ``TypeError``.
    """
    if type(value) is not bytes:
        raise TypeError(f"{name} must be bytes, not {type(value).__name__}")


def check_time(now):
    """
    Refuse a ``now`` that is not a number of seconds with a ``TypeError``;
    it would otherwise reach the database and fail a whole batch.
    """
    if type(now) not in (int, float):
        raise TypeError(f"now must be a number, not {type(now).__name__}")


class InboxQuotas:
    """
    Registered clients and how many messages and bytes each inbox holds.

    The store keeps this in memory, so that the hot path (is the destination
    registered, is its inbox full?) is answered at once, without the database.
    A message counts from the moment its append is accepted, even before it
    is committed, so that a burst cannot overshoot the quota.
    """

    def __init__(self, limits):
        self._limits = limits
        # address -> [message count, byte count]
        self._usage = {}
        self.messages = 0
        self.bytes = 0

    def __contains__(self, address):
        return address in self._usage

    def __len__(self):
        return len(self._usage)

    def add_client(self, address, count=0, size=0):
        """
        Start accounting for ``address`` (no change if it is known).
        """
        if address not in self._usage:
            self._usage[address] = [count, size]
            self.messages += count
            self.bytes += size

    def remove_client(self, address):
        """
        Stop accounting for ``address`` and drop its usage from the totals.
        """
        usage = self._usage.pop(address, None)
        if usage is not None:
            self.messages -= usage[0]
            self.bytes -= usage[1]

    def reserve(self, address, message):
        """
        Count ``message`` against the inbox of ``address``.

        :raises TypeError: if ``address`` or ``message`` is not bytes.
        :raises UnknownDestination: if ``address`` is not registered.
        :raises MessageTooLarge: if ``message`` exceeds the slot size.
        :raises InboxFull: if the inbox is at its message or byte quota.
            Nothing is counted when this raises.
        """
        check_bytes("address", address)
        check_bytes("message", message)
        usage = self._usage.get(address)
        if usage is None:
            raise UnknownDestination("not a registered client")
        size = len(message)
        limits = self._limits
        if size > limits.slot_size:
            raise MessageTooLarge(f"{size} bytes > slot of {limits.slot_size}")
        if usage[0] >= limits.max_messages or usage[1] + size > limits.max_bytes:
            raise InboxFull("inbox at quota")
        usage[0] += 1
        usage[1] += size
        self.messages += 1
        self.bytes += size

    def release(self, address, count, size):
        """
        Take ``count`` messages of ``size`` bytes in all off ``address``.
        """
        usage = self._usage.get(address)
        if usage is not None:
            usage[0] -= count
            usage[1] -= size
            self.messages -= count
            self.bytes -= size

    def sizes(self):
        """
        :returns: the gauges of ``IInboxStore.sizes``.
        """
        return {"clients": len(self._usage), "messages": self.messages, "bytes": self.bytes}

    def usage(self):
        """
        :returns: ``[(address, messages, bytes)]`` of every registered
            client, by address (for the operator's admin commands).
        """
        return sorted((address, count, size) for address, (count, size) in self._usage.items())
