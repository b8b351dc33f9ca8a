"""
Ethereum transactions: check that a payload is exactly one signed
transaction, legacy (RLP list) or an EIP-2718 typed envelope of type 0x01
(EIP-2930, access list) or 0x02 (EIP-1559), and compute its hash, the
Keccak-256 of the raw bytes.

RLP comes from ``rlp`` (strict: canonical lengths, integers without
leading zeros, nothing after the list) and Keccak from ``eth-hash``; only
the field layout of each type is written here.  Signatures are checked
for range only; recovering the sender is the node's job.
"""

import rlp
from eth_hash.auto import keccak
from rlp.exceptions import DecodingError, DeserializationError
from rlp.sedes import Binary, CountableList, List, big_endian_int

from nymprov.backends.broadcast.errors import (
    MalformedTransaction,
    TransactionTooLarge,
    UnsupportedTransaction,
)

#: geth's transaction pool refuses anything above 128 KiB (txMaxSize).
MAX_SIZE = 128 * 1024

#: The order of secp256k1's group: r and s lie in [1, N), and s in the
#: lower half (EIP-2), or no node takes the signature.
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141

LEGACY, ACCESS_LIST, DYNAMIC_FEE = 0, 1, 2

_address = Binary.fixed_length(20)
_to = Binary(min_length=0, max_length=20)  # empty: contract creation
_bytes = Binary()
_access_list = CountableList(List([_address, CountableList(Binary.fixed_length(32))]))

_FIELDS = {
    LEGACY: ["nonce", "gas_price", "gas", "to", "value", "data", "v", "r", "s"],
    ACCESS_LIST: ["chain_id", "nonce", "gas_price", "gas", "to", "value", "data", "access_list",
                  "y_parity", "r", "s"],
    DYNAMIC_FEE: ["chain_id", "nonce", "max_priority_fee_per_gas", "max_fee_per_gas", "gas", "to",
                  "value", "data", "access_list", "y_parity", "r", "s"],
}
_SEDES = {"to": _to, "data": _bytes, "access_list": _access_list}
_LISTS = {kind: List([_SEDES.get(name, big_endian_int) for name in names], strict=True)
          for kind, names in _FIELDS.items()}

#: Widths no node accepts beyond (EIP-2681 bounds the nonce to 64 bits).
_BITS = {"nonce": 64, "gas": 64}


class EthereumTransaction:
    """
    One parsed transaction.

    :ivar bytes raw: the bytes as given (what ``eth_sendRawTransaction`` takes).
    :ivar bytes txid: the transaction hash, Keccak-256 of ``raw``.
    :ivar int kind: 0 (legacy), 1 or 2 (the EIP-2718 type).
    :ivar chain_id: the chain it is signed for, ``None`` for a legacy
        transaction without replay protection (pre-EIP-155).
    :ivar dict fields: every field by name.
    """

    __slots__ = ("raw", "txid", "kind", "chain_id", "fields")

    def __init__(self, raw, txid, kind, chain_id, fields):
        self.raw = raw
        self.txid = txid
        self.kind = kind
        self.chain_id = chain_id
        self.fields = fields

    @property
    def txid_hex(self):
        """The hash as nodes and explorers show it: ``0x`` and 64 hex digits."""
        return "0x" + self.txid.hex()


def parse_transaction(raw, max_size=MAX_SIZE):
    """
    :param bytes raw: one signed transaction, nothing before or after.
    :returns: an :class:`EthereumTransaction`.
    :raises TransactionTooLarge: beyond ``max_size`` bytes.
    :raises UnsupportedTransaction: a typed transaction of another type.
    :raises MalformedTransaction: anything else that is not one transaction.
    """
    raw = bytes(raw)
    if len(raw) > max_size:
        raise TransactionTooLarge(f"{len(raw)} bytes, at most {max_size}")
    if not raw:
        raise MalformedTransaction("empty")
    first = raw[0]
    if first >= 0xC0:  # an RLP list: a legacy transaction
        kind, encoded = LEGACY, raw
    elif first <= 0x7F:  # EIP-2718: type byte, then the payload
        kind, encoded = first, raw[1:]
        if kind not in (ACCESS_LIST, DYNAMIC_FEE):
            raise UnsupportedTransaction(f"transaction type {kind:#04x} is not broadcast (0x01, 0x02 and legacy are)")
    else:
        raise MalformedTransaction(f"first byte {first:#04x} starts neither a type nor a list")
    try:
        values = rlp.decode(encoded, sedes=_LISTS[kind], strict=True)
    except (DecodingError, DeserializationError) as e:
        raise MalformedTransaction(f"type {kind} fields: {_first_line(e)}") from None
    fields = dict(zip(_FIELDS[kind], values))
    if len(fields["to"]) not in (0, 20):
        raise MalformedTransaction("recipient is neither empty nor 20 bytes")
    for name, bits in _BITS.items():
        if fields[name] >= 1 << bits:
            raise MalformedTransaction(f"{name} wider than {bits} bits")
    for name, value in fields.items():
        if isinstance(value, int) and value >= 1 << 256:
            raise MalformedTransaction(f"{name} wider than 256 bits")
    chain_id = _check_signature(kind, fields)
    return EthereumTransaction(raw, keccak(raw), kind, chain_id, fields)


def _check_signature(kind, fields):
    """:returns: the chain id the signature commits to, or ``None``."""
    r, s = fields["r"], fields["s"]
    if not (0 < r < SECP256K1_N and 0 < s <= SECP256K1_N // 2):
        raise MalformedTransaction("signature r or s out of range")
    if kind != LEGACY:
        if fields["y_parity"] not in (0, 1):
            raise MalformedTransaction("y parity is neither 0 nor 1")
        return fields["chain_id"]
    v = fields["v"]
    if v in (27, 28):
        return None
    if v >= 37:  # EIP-155: v = chain_id * 2 + 35 or 36
        return (v - 35) // 2
    raise MalformedTransaction(f"legacy v {v} is neither 27/28 nor EIP-155")


def _first_line(error):
    # rlp's messages can quote the offending bytes; keep the reason only.
    return str(error).splitlines()[0][:120] if str(error) else type(error).__name__
