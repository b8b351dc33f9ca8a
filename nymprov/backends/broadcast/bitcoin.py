"""
Bitcoin transactions: parse one serialized transaction (legacy or segwit,
BIP 144) far enough to know that it is exactly one well-formed
transaction, and compute its txid.

Written by hand: the format is small and stable, and no maintained Python
library parses it without bringing a wallet, key handling or global
network state along (python-bitcoinlib, bitcoinlib); the txid needs only
the byte layout.  Script and signature validity are the node's to judge.
"""

import hashlib
import struct

from nymprov.backends.broadcast.errors import MalformedTransaction, TransactionTooLarge

#: Bitcoin Core refuses to relay a transaction of more than 400,000 weight
#: units (MAX_STANDARD_TX_WEIGHT); 400,000 bytes bounds any serialization.
MAX_SIZE = 400_000
#: 21 million bitcoin in satoshis (MAX_MONEY): no output or sum beyond it.
MAX_MONEY = 21_000_000 * 100_000_000
#: Below this many bytes without witness, Core refuses to relay
#: (MIN_STANDARD_TX_NONWITNESS_SIZE); counted here as malformed.
MIN_NONWITNESS_SIZE = 65

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_NULL_PREVOUT = bytes(32) + b"\xff\xff\xff\xff"


class _Reader:
    """Reads a serialization from its start; every short read is refused."""

    def __init__(self, data):
        self.data = data
        self.offset = 0

    def take(self, count, what):
        end = self.offset + count
        if end > len(self.data):
            raise MalformedTransaction(f"ends inside {what}")
        chunk = self.data[self.offset : end]
        self.offset = end
        return chunk

    def u32(self, what):
        return _U32.unpack(self.take(4, what))[0]

    def u64(self, what):
        return _U64.unpack(self.take(8, what))[0]

    def compact_size(self, what):
        """Bitcoin's CompactSize, which Core refuses in non-minimal form."""
        first = self.take(1, what)[0]
        if first < 0xFD:
            return first
        width, least = {0xFD: (2, 0xFD), 0xFE: (4, 0x10000), 0xFF: (8, 0x100000000)}[first]
        value = int.from_bytes(self.take(width, what), "little")
        if value < least:
            raise MalformedTransaction(f"non-canonical length of {what}")
        return value

    def count(self, what, size_each):
        """A CompactSize count, bounded by the bytes that are left."""
        value = self.compact_size(what)
        if value * size_each > len(self.data) - self.offset:
            raise MalformedTransaction(f"{what} count {value} runs past the end")
        return value

    def blob(self, what):
        return self.take(self.count(what, 1), what)


class BitcoinTransaction:
    """
    One parsed transaction.

    :ivar bytes raw: the serialization as given.
    :ivar bytes txid: the txid in the byte order people write it (the
        double SHA-256 of the serialization without witness, reversed).
    :ivar list inputs: ``(prevout_txid, index)`` of each input.
    :ivar list outputs: ``(value, script)`` of each output.
    :ivar bool segwit: whether witness data is present.
    """

    __slots__ = ("raw", "txid", "inputs", "outputs", "segwit", "version", "locktime")

    def __init__(self, raw, txid, inputs, outputs, segwit, version, locktime):
        self.raw = raw
        self.txid = txid
        self.inputs = inputs
        self.outputs = outputs
        self.segwit = segwit
        self.version = version
        self.locktime = locktime

    @property
    def is_coinbase(self):
        """A block's first transaction, which no node takes from anyone."""
        return len(self.inputs) == 1 and self.inputs[0] == (bytes(32), 0xFFFFFFFF)

    @property
    def txid_hex(self):
        """The txid as hex, as block explorers and ``bitcoin-cli`` show it."""
        return self.txid.hex()


def parse_transaction(raw, max_size=MAX_SIZE):
    """
    :param bytes raw: one serialized transaction, nothing before or after.
    :returns: a :class:`BitcoinTransaction`.
    :raises TransactionTooLarge: beyond ``max_size`` bytes.
    :raises MalformedTransaction: if ``raw`` is not exactly one transaction.
    """
    raw = bytes(raw)
    if len(raw) > max_size:
        raise TransactionTooLarge(f"{len(raw)} bytes, at most {max_size}")
    reader = _Reader(raw)
    version = reader.u32("version")
    after_version = reader.offset
    segwit = False
    # BIP 144: a zero "input count" is the marker, then the flag 1.
    if raw[after_version : after_version + 1] == b"\x00":
        reader.take(1, "segwit marker")
        if reader.take(1, "segwit flag") != b"\x01":
            raise MalformedTransaction("unknown segwit flag")
        segwit = True
    body_start = reader.offset
    inputs = []
    for _ in range(reader.count("inputs", 41)):
        prevout = reader.take(32, "input prevout")[::-1]
        index = reader.u32("input prevout index")
        reader.blob("input script")
        reader.u32("input sequence")
        inputs.append((prevout, index))
    if not inputs:
        raise MalformedTransaction("no inputs")
    outputs = []
    total = 0
    for _ in range(reader.count("outputs", 9)):
        value = reader.u64("output value")
        total += value
        if value > MAX_MONEY or total > MAX_MONEY:
            raise MalformedTransaction("output value beyond 21 million bitcoin")
        outputs.append((value, reader.blob("output script")))
    if not outputs:
        raise MalformedTransaction("no outputs")
    body_end = reader.offset
    if segwit:
        witnessed = False
        for _ in inputs:
            items = reader.count("witness items", 1)
            for _ in range(items):
                reader.blob("witness item")
            witnessed = witnessed or items > 0
        if not witnessed:
            # Core refuses a segwit serialization without any witness.
            raise MalformedTransaction("segwit marker without witness data")
    locktime = reader.u32("locktime")
    if reader.offset != len(raw):
        raise MalformedTransaction(f"{len(raw) - reader.offset} bytes after the transaction")
    stripped = raw[:after_version] + raw[body_start:body_end] + raw[reader.offset - 4 :] if segwit else raw
    if len(stripped) < MIN_NONWITNESS_SIZE:
        raise MalformedTransaction(f"{len(stripped)} bytes without witness, below {MIN_NONWITNESS_SIZE}")
    if len({prevout for prevout in inputs}) != len(inputs):
        raise MalformedTransaction("an input is spent twice")
    txid = hashlib.sha256(hashlib.sha256(stripped).digest()).digest()[::-1]
    return BitcoinTransaction(raw, txid, inputs, outputs, segwit, version, locktime)
