"""
Tests for the broadcaster's chain parsers: real Bitcoin mainnet
transactions whose txids are public, and Ethereum transactions signed
with ``eth-account``.
"""

from eth_account import Account
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from nymprov.backends.broadcast import bitcoin, ethereum
from nymprov.backends.broadcast.errors import (
    InvalidTransaction,
    MalformedTransaction,
    TransactionTooLarge,
    UnsupportedTransaction,
)

#: Mainnet transactions by txid.  The legacy, segwit v0 and taproot ones
#: are the three Bitcoin Core's kernel tests verify scripts of
#: (src/test/kernel/test_kernel.cpp); the other two are the genesis
#: coinbase and the first payment (Satoshi to Hal Finney, block 170).
GENESIS_COINBASE = "4a5e1e4baab89f3a32518a88c31bc87f618f76673e2cc77ab2127b7afdeda33b"
BLOCK_170 = "f4184fc596403b9d638783cf57adfe4c75c605f6356fbc91338530e9831e9e16"
LEGACY = "aca326a724eda9a461c10a876534ecd5ae7b27f10f26c3862fb996f80ea2d45d"
SEGWIT_V0 = "1a3e89644985fbbb41e0dcfe176739813542b5937003c46a07de1e3ee7a4a7f3"
TAPROOT = "33e794d097969002ee05d336686fc03c9e15a597c1b9827669460fac98799036"

MAINNET = {
    GENESIS_COINBASE: (
        "01000000010000000000000000000000000000000000000000000000000000000000000000ffffffff4d04ffff001d"
        "0104455468652054696d65732030332f4a616e2f32303039204368616e63656c6c6f72206f6e206272696e6b206f"
        "66207365636f6e64206261696c6f757420666f722062616e6b73ffffffff0100f2052a01000000434104678afdb0"
        "fe5548271967f1a67130b7105cd6a828e03909a67962e0ea1f61deb649f6bc3f4cef38c4f35504e51ec112de5c38"
        "4df7ba0b8d578a4c702b6bf11d5fac00000000"
    ),
    BLOCK_170: (
        "0100000001c997a5e56e104102fa209c6a852dd90660a20b2d9c352423edce25857fcd3704000000004847304402"
        "204e45e16932b8af514961a1d3a1a25fdf3f4f7732e9d624c6c61548ab5fb8cd410220181522ec8eca07de4860a4"
        "acdd12909d831cc56cbbac4622082221a8768d1d0901ffffffff0200ca9a3b00000000434104ae1a62fe09c5f51b"
        "13905f07f06b99a2f7159b2225f374cd378d71302fa28414e7aab37397f554a7df5f142c21c1b7303b8a0626f1ba"
        "ded5c72a704f7e6cd84cac00286bee0000000043410411db93e1dcdb8a016b49840f8c53bc1eb68a382e97b1482e"
        "cad7b148a6909a5cb2e0eaddfb84ccf9744464f82e160bfa9b8b64f9d4c03f999b8643f656b412a3ac00000000"
    ),
    LEGACY: (
        "02000000013f7cebd65c27431a90bba7f796914fe8cc2ddfc3f2cbd6f7e5f2fc854534da95000000006b48304502"
        "2100de1ac3bcdfb0332207c4a91f3832bd2c2915840165f876ab47c5f8996b971c3602201c6c053d750fadde599e"
        "6f5c4e1963df0f01fc0d97815e8157e3d59fe09ca30d012103699b464d1d8bc9e47d4fb1cdaa89a1c5783d68363c"
        "4dbc4b524ed3d857148617feffffff02836d3c01000000001976a914fc25d6d5c94003bf5b0c7b640a248e2c637f"
        "cfb088ac7ada8202000000001976a914fbed3d9b11183209a57999d54d59f67c019e756c88ac6acb0700"
    ),
    SEGWIT_V0: (
        "010000000001011f97548fbbe7a0db7588a66e18d803d0089315aa7d4cc28360b6ec50ef36718a0100000000ffff"
        "ffff02df1776000000000017a9146c002a686959067f4866b8fb493ad7970290ab728757d29f0000000000220020"
        "701a8d401c84fb13e6baf169d59684e17abd9fa216c8cc5b9fc63d622ff8c58d04004730440220565d170eed95ff"
        "95027a69b313758450ba84a01224e1f7f130dda46e94d13f8602207bdd20e307f062594022f12ed5017bbf4a055a"
        "06aea91c10110a0e3bb23117fc014730440220647d2dc5b15f60bc37dc42618a370b2a1490293f9e5c8464f53ec4"
        "fe1dfe067302203598773895b4b16d37485cbe21b337f4e4b650739880098c592553add7dd4355016952210375e0"
        "0eb72e29da82b89367947f29ef34afb75e8654f6ea368e0acdfd92976b7c2103a1b26313f430c4b15bb1fdce6632"
        "07659d8cac749a0e53d70eff01874496feff2103c96d495bfdd5ba4145e3e046fee45e84a8a48ad05bd8dbb395c0"
        "11a32cf9f88053ae00000000"
    ),
    TAPROOT: (
        "01000000000101d1f1c1f8cdf6759167b90f52c9ad358a369f95284e841d7a2536cef31c0549580100000000fdff"
        "ffff020000000000000000316a2f49206c696b65205363686e6f7272207369677320616e6420492063616e6e6f74"
        "206c69652e204062697462756734329e06010000000000225120a37c3903c8d0db6512e2b40b0dffa05e5a3ab736"
        "03ce8c9c4b7771e5412328f90140a60c383f71bac0ec919b1d7dbc3eb72dd56e7aa99583615564f9f99b8ae4e837"
        "b758773a5b2e4c51348854c8389f008e05029db7f464a5ff2e01d5e6e626174affd30a00"
    ),
}


def mainnet(txid):
    """:returns: the raw bytes of a mainnet transaction above."""
    return bytes.fromhex(MAINNET[txid])


class BitcoinTests(SynchronousTestCase):
    """Bitcoin serializations, legacy and segwit."""

    def test_mainnet_txids(self):
        """Each mainnet transaction parses whole and hashes to its public txid."""
        for txid in MAINNET:
            tx = bitcoin.parse_transaction(mainnet(txid))
            self.assertEqual(tx.txid_hex, txid)
            self.assertEqual(tx.raw, mainnet(txid))

    def test_shapes(self):
        """Witness, coinbase, inputs and outputs are read as they are on chain."""
        genesis = bitcoin.parse_transaction(mainnet(GENESIS_COINBASE))
        self.assertTrue(genesis.is_coinbase)
        self.assertFalse(genesis.segwit)
        self.assertEqual([value for value, _ in genesis.outputs], [50 * 100_000_000])
        hal = bitcoin.parse_transaction(mainnet(BLOCK_170))
        self.assertEqual([value for value, _ in hal.outputs], [10 * 100_000_000, 40 * 100_000_000])
        self.assertEqual(hal.inputs[0][0].hex(), "0437cd7f8525ceed2324359c2d0ba26006d92d856a9c20fa0241106ee5a597c9")
        segwit = bitcoin.parse_transaction(mainnet(SEGWIT_V0))
        self.assertTrue(segwit.segwit)
        self.assertEqual(segwit.outputs[1][1][:2], b"\x00\x20")  # P2WSH
        taproot = bitcoin.parse_transaction(mainnet(TAPROOT))
        self.assertTrue(taproot.segwit)
        self.assertFalse(taproot.is_coinbase)
        self.assertEqual(taproot.outputs[0][0], 0)
        self.assertEqual(taproot.outputs[1][1][:2], b"\x51\x20")  # P2TR
        self.assertIn(b"I like Schnorr sigs", taproot.outputs[0][1])

    def test_every_truncation_and_extension_refused(self):
        """Cut at any byte, or with a byte appended, a transaction is refused."""
        for txid in MAINNET:
            raw = mainnet(txid)
            for end in range(len(raw)):
                self.assertRaises(MalformedTransaction, bitcoin.parse_transaction, raw[:end])
            self.assertRaises(MalformedTransaction, bitcoin.parse_transaction, raw + b"\x00")

    def test_segwit_rules(self):
        """An unknown flag, or a marker with empty witnesses, is refused."""
        raw = bytearray(mainnet(TAPROOT))
        raw[5] = 2
        self.assertRaises(MalformedTransaction, bitcoin.parse_transaction, bytes(raw))
        # The taproot transaction with its one witness stack emptied.
        tx = mainnet(TAPROOT)
        witness_start = len(tx) - 4 - 66
        self.assertEqual(tx[witness_start : witness_start + 2], b"\x01\x40")
        empty = tx[:witness_start] + b"\x00" + tx[-4:]
        with self.assertRaises(MalformedTransaction) as caught:
            bitcoin.parse_transaction(empty)
        self.assertIn("without witness", str(caught.exception))

    def test_values_and_lengths(self):
        """Too much money, a non-minimal length, a double spend, a short or long tx."""
        hal = mainnet(BLOCK_170)
        value_at = hal.index(bytes.fromhex("00ca9a3b00000000"))
        too_much = hal[:value_at] + (21_000_000 * 100_000_000 + 1).to_bytes(8, "little") + hal[value_at + 8 :]
        self.assertRaises(MalformedTransaction, bitcoin.parse_transaction, too_much)
        # The input script length 0x48 written as 0xfd 0x48 0x00.
        script_at = 4 + 1 + 36
        self.assertEqual(hal[script_at], 0x48)
        padded = hal[:script_at] + b"\xfd\x48\x00" + hal[script_at + 1 :]
        with self.assertRaises(MalformedTransaction) as caught:
            bitcoin.parse_transaction(padded)
        self.assertIn("non-canonical", str(caught.exception))
        one_input = hal[4 : script_at + 1 + 0x48 + 4]
        twice = hal[:4] + b"\x02" + one_input[1:] + one_input[1:] + hal[5 + len(one_input) - 1 :]
        self.assertRaises(MalformedTransaction, bitcoin.parse_transaction, twice)
        self.assertRaises(TransactionTooLarge, bitcoin.parse_transaction, hal, max_size=len(hal) - 1)
        self.assertEqual(bitcoin.parse_transaction(hal, max_size=len(hal)).txid_hex, BLOCK_170)

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=400))
    def test_random_bytes_refused_typed(self, data):
        """Random bytes are refused with a typed reason, never another error."""
        try:
            bitcoin.parse_transaction(data)
        except InvalidTransaction:
            pass


#: anvil's first two dev accounts (its documented, well-known test keys).
DEV_KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
DEV_TO = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"


def signed(**fields):
    """:returns: eth-account's signed transaction (``raw_transaction``, ``hash``)."""
    tx = dict(nonce=7, gas=21000, to=DEV_TO, value=10**15, data=b"", chainId=31337)
    tx.update(fields)
    if "maxFeePerGas" not in tx:
        tx.setdefault("gasPrice", 10**9)
    return Account.from_key(DEV_KEY).sign_transaction(tx)


def legacy(**fields):
    return signed(**fields)


def access_list(**fields):
    keys = ["0x" + "00" * 31 + "01"]
    return signed(type=1, accessList=[{"address": DEV_TO, "storageKeys": keys}], **fields)


def dynamic_fee(**fields):
    return signed(maxFeePerGas=2 * 10**9, maxPriorityFeePerGas=10**9, **fields)


class EthereumTests(SynchronousTestCase):
    """Legacy and typed Ethereum transactions."""

    def test_three_kinds(self):
        """Legacy, 0x01 and 0x02 parse; the hash is the one eth-account reports."""
        for make, kind in ((legacy, 0), (access_list, 1), (dynamic_fee, 2)):
            tx_signed = make()
            tx = ethereum.parse_transaction(tx_signed.raw_transaction)
            self.assertEqual(tx.kind, kind)
            self.assertEqual(tx.txid, bytes(tx_signed.hash))
            self.assertEqual(tx.txid_hex, "0x" + bytes(tx_signed.hash).hex())
            self.assertEqual(tx.chain_id, 31337)
            self.assertEqual(tx.fields["nonce"], 7)
            self.assertEqual(tx.fields["to"], bytes.fromhex(DEV_TO[2:]))

    def test_unprotected_legacy(self):
        """A pre-EIP-155 signature (v 27/28) has no chain id."""
        tx_signed = Account.from_key(DEV_KEY).sign_transaction(
            dict(nonce=0, gas=21000, gasPrice=1, to=DEV_TO, value=1, data=b""))
        self.assertIsNone(ethereum.parse_transaction(tx_signed.raw_transaction).chain_id)

    def test_other_types_refused(self):
        """Types other than 0x01 and 0x02 (blob, set-code, unknown) are unsupported."""
        body = bytes(dynamic_fee().raw_transaction)[1:]
        for kind in (0x03, 0x04, 0x05, 0x7F, 0x00):
            with self.assertRaises(UnsupportedTransaction) as caught:
                ethereum.parse_transaction(bytes([kind]) + body)
            self.assertIn(f"{kind:#04x}", str(caught.exception))
        self.assertRaises(MalformedTransaction, ethereum.parse_transaction, b"\x99" + body)

    def test_malformed(self):
        """Truncations, extra bytes, wrong field counts and bad RLP are malformed."""
        for make in (legacy, access_list, dynamic_fee):
            raw = bytes(make().raw_transaction)
            for end in range(len(raw)):
                self.assertRaises(MalformedTransaction, ethereum.parse_transaction, raw[:end])
            self.assertRaises(MalformedTransaction, ethereum.parse_transaction, raw + b"\x80")
        import rlp

        fields = rlp.decode(bytes(legacy().raw_transaction))
        self.assertRaises(MalformedTransaction, ethereum.parse_transaction, rlp.encode(fields[:-1]))
        # A nonce with a leading zero byte is not canonical RLP.
        padded = rlp.encode([b"\x00\x07"] + fields[1:])
        self.assertRaises(MalformedTransaction, ethereum.parse_transaction, padded)
        # A recipient of 5 bytes.
        self.assertRaises(MalformedTransaction, ethereum.parse_transaction,
                          rlp.encode(fields[:3] + [b"12345"] + fields[4:]))

    def test_signature_ranges(self):
        """A high s (EIP-2), a zero r, a bad parity or a bad legacy v are refused."""
        import rlp

        fields = rlp.decode(bytes(legacy().raw_transaction))
        s = int.from_bytes(fields[8], "big")
        high_s = (ethereum.SECP256K1_N - s).to_bytes(32, "big")
        for bad in (fields[:8] + [high_s], fields[:7] + [b"", fields[8]], [*fields[:6], b"\x1d", *fields[7:]]):
            self.assertRaises(MalformedTransaction, ethereum.parse_transaction, rlp.encode(bad))
        typed = bytes(dynamic_fee().raw_transaction)
        fields = rlp.decode(typed[1:])
        bad_parity = fields[:9] + [b"\x02"] + fields[10:]
        self.assertRaises(MalformedTransaction, ethereum.parse_transaction, b"\x02" + rlp.encode(bad_parity))

    def test_size_limit(self):
        """A transaction above the limit is refused before it is parsed."""
        raw = bytes(signed(data=b"\x01" * 300, gas=100000).raw_transaction)
        self.assertRaises(TransactionTooLarge, ethereum.parse_transaction, raw, max_size=len(raw) - 1)
        self.assertRaises(TransactionTooLarge, ethereum.parse_transaction, b"\xc0" * (ethereum.MAX_SIZE + 1))

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=400))
    def test_random_bytes_refused_typed(self, data):
        """Random bytes are refused with a typed reason, never another error."""
        try:
            ethereum.parse_transaction(data)
        except InvalidTransaction:
            pass
