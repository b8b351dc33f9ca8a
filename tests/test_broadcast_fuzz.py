"""
Bad input to the broadcaster: 10,000 random and mutated payloads, each
refused at delivery with a typed reason, with nothing queued, remembered
or sent to the node.
"""

import os
import random
import sqlite3
from collections import Counter

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site

from nymprov.backends.broadcast.backend import BroadcastProvider, parse_delay
from nymprov.backends.broadcast.errors import InvalidTransaction

from .test_backend_surbreply import TOPOLOGY, RecordingSender, final, make_surb
from .test_broadcast_backend import tx_message
from .test_broadcast_chains import LEGACY, MAINNET, SEGWIT_V0, TAPROOT, access_list, dynamic_fee, legacy, mainnet

PAYLOADS_PER_CHAIN = 5000


class Recorder(Resource):
    """Counts every request that reaches it (none should)."""

    isLeaf = True

    def __init__(self):
        Resource.__init__(self)
        self.calls = 0

    def render_POST(self, request):
        self.calls += 1
        return b'{"result": "0x00", "error": null, "id": 1}'


def mutations(rng, valid, prefixes, count):
    """
    ``count`` payloads that are not one transaction: random bytes (some
    behind a plausible first few bytes), and valid transactions cut short,
    extended, or with one byte inserted or removed.
    """
    made = []
    while len(made) < count:
        kind = rng.randrange(6)
        tx = rng.choice(valid)
        if kind == 0:
            payload = rng.randbytes(rng.randrange(0, 700))
        elif kind == 1:
            payload = rng.choice(prefixes) + rng.randbytes(rng.randrange(0, 400))
        elif kind == 2:
            payload = tx[: rng.randrange(0, len(tx))]
        elif kind == 3:
            payload = tx + rng.randbytes(rng.randrange(1, 40))
        elif kind == 4:
            at = rng.randrange(len(tx))
            payload = tx[:at] + tx[at + 1 :]
        else:
            at = rng.randrange(len(tx))
            payload = tx[:at] + rng.randbytes(1) + tx[at:]
        made.append(payload)
    return made


class BadInputTests(TestCase):
    """10,000 payloads that are not transactions."""

    timeout = 300

    async def refuse_all(self, chain, payloads, **settings):
        recorder = Recorder()
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Site(recorder))
        self.addCleanup(port.stopListening)
        path = self.mktemp() + ".sqlite"
        sender = RecordingSender()
        backend = BroadcastProvider(sender, TOPOLOGY, reactor, chain=chain, path=path,
                                    endpoints=[f"http://127.0.0.1:{port.getHost().port}/"],
                                    delay=parse_delay("0"), **settings)
        await backend.startService()
        self.addCleanup(lambda: backend.running and backend.stopService())
        reasons = Counter()
        surb = make_surb()
        for i, payload in enumerate(payloads):
            message = tx_message(payload, [surb] if i % 2 else [])
            try:
                await backend.deliver(final(message))
            except InvalidTransaction as e:
                reasons[e.reason] += 1
            else:
                self.fail(f"payload {i} ({payload.hex()}) was taken")
        self.assertEqual(sum(reasons.values()), len(payloads))
        self.assertEqual((backend.queued_count, recorder.calls, sender.sent), (0, 0, []))
        await backend.stopService()
        db = sqlite3.connect(path)
        self.addCleanup(db.close)
        rows = [db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                for table in ("broadcast_queue", "broadcast_seen")]
        self.assertEqual(rows, [0, 0])
        return reasons

    async def test_bitcoin(self):
        """Mutated mainnet transactions and random bytes: all refused, typed, nothing sent."""
        rng = random.Random(1789)
        valid = [mainnet(txid) for txid in (LEGACY, SEGWIT_V0, TAPROOT)]
        prefixes = [b"\x01\x00\x00\x00", b"\x02\x00\x00\x00\x00\x01", b"\x01\x00\x00\x00\x01" + bytes(32)]
        payloads = mutations(rng, valid, prefixes, PAYLOADS_PER_CHAIN - 2)
        payloads += [bytes.fromhex(MAINNET[next(iter(MAINNET))]), os.urandom(2000)]  # a coinbase; too large
        reasons = await self.refuse_all("bitcoin", payloads, max_size=1500)
        self.assertEqual(set(reasons), {"tx_malformed", "tx_unsupported", "tx_too_large"})

    async def test_ethereum(self):
        """Mutated signed transactions, unknown types and random bytes: all refused, typed."""
        rng = random.Random(8545)
        valid = [bytes(make(nonce=n).raw_transaction) for make in (legacy, access_list, dynamic_fee)
                 for n in range(3)]
        prefixes = [b"\x02\xf8", b"\x01\xf8", b"\xf8", b"\xf9\x01", b"\x03", b"\x04\xf8"]
        payloads = mutations(rng, valid, prefixes, PAYLOADS_PER_CHAIN - 2)
        payloads += [os.urandom(3000), bytes(legacy(chainId=1).raw_transaction)]  # too large; another chain
        reasons = await self.refuse_all("ethereum", payloads, max_size=2000, chain_id=31337)
        self.assertEqual(set(reasons), {"tx_malformed", "tx_unsupported", "tx_too_large"})
