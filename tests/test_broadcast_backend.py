"""
Tests for the broadcast backend against a small JSON-RPC server in this
test that behaves as Bitcoin Core documents its RPC (method, params,
basic auth, error codes).  No Bitcoin Core is available from the package
registries, so it cannot be started here; the Ethereum side is tested
against a real node (anvil) in ``test_broadcast_anvil``.
"""

import base64
import json
import os
import random
import sqlite3
import sys

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.client import Agent
from twisted.web.server import Site
from zope.interface.verify import verifyObject

from nymprov.backends.broadcast import rpc
from nymprov.backends.broadcast.backend import (
    BroadcastProvider,
    MalformedAnswer,
    decode_answer,
    encode_answer,
    parse_delay,
)
from nymprov.backends.broadcast.errors import MalformedTransaction, UnsupportedTransaction
from nymprov.backends.durablequeue import DurableQueue
from nymprov.backends.surbreply import ServiceRequest, decode_fragment, encode_fragment, encode_service_request
from nymprov.errors import ConfigError
from nymprov.interfaces import IProvider
from nymprov.metrics import Counters
from nymprov.plugins import find_maker, parse_backend_options
from nymprov.tools.testnet import _free_ports
from nymprov.wire.envelope import decode_envelope

from .support import wait_for
from .test_backend_surbreply import TOPOLOGY, RecordingSender, final, make_surb, walk
from .test_broadcast_chains import GENESIS_COINBASE, LEGACY, SEGWIT_V0, TAPROOT, mainnet

COOKIE = "__cookie__:9f3d5c0e1a2b4c6d8e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d"


def tx_message(raw, surbs=()):
    """A one-fragment request carrying ``raw``."""
    return encode_fragment(os.urandom(16), 0, 1, encode_service_request(list(surbs), raw))


def answers(sender):
    """The broadcast answers that went back through SURBs, decoded."""
    return [decode_answer(decode_fragment(decode_envelope(walk(packet)).body).chunk) for _, packet in sender.sent]


class FakeBitcoinCore(Resource):
    """
    Bitcoin Core's RPC as its documentation gives it: POST to ``/`` with
    basic auth (401 and no body otherwise), a JSON-RPC 1.0 request
    ``{"jsonrpc": "1.0", "id": ..., "method": "sendrawtransaction",
    "params": [hexstring]}``; the txid as ``result``; an error as HTTP 500
    with ``{"result": null, "error": {"code": ..., "message": ...}}``.

    ``errors`` maps a txid to the ``(code, message)`` answers to give, in
    turn, before the txid is taken.
    """

    isLeaf = True

    def __init__(self, credentials=COOKIE):
        Resource.__init__(self)
        self.credentials = credentials
        self.errors = {}
        self.taken = []  # raw hex of every transaction taken
        self.calls = 0

    def render_POST(self, request):
        self.calls += 1
        expected = b"Basic " + base64.b64encode(self.credentials.encode())
        if request.getHeader(b"authorization") != expected:
            request.setResponseCode(401)
            request.setHeader(b"www-authenticate", b'Basic realm="jsonrpc"')
            return b""
        assert request.path == b"/", request.path
        call = json.loads(request.content.read())
        assert call["method"] == "sendrawtransaction", call
        assert call["jsonrpc"] == "1.0" and "id" in call, call
        [hexstring] = call["params"]
        raw = bytes.fromhex(hexstring)
        from nymprov.backends.broadcast.bitcoin import parse_transaction

        txid = parse_transaction(raw).txid_hex
        pending = self.errors.get(txid)
        if pending:
            code, message = pending.pop(0)
            request.setResponseCode(500)
            return json.dumps({"result": None, "error": {"code": code, "message": message},
                               "id": call["id"]}).encode()
        self.taken.append(hexstring)
        return json.dumps({"result": txid, "error": None, "id": call["id"]}).encode()


class FakeEsplora(Resource):
    """``POST /tx`` with the hex as body: 200 and the txid, or 400 and Core's error."""

    isLeaf = True

    def __init__(self):
        Resource.__init__(self)
        self.taken = []
        self.refuse = None

    def render_POST(self, request):
        assert request.path == b"/api/tx", request.path
        hexstring = request.content.read().decode()
        from nymprov.backends.broadcast.bitcoin import parse_transaction

        txid = parse_transaction(bytes.fromhex(hexstring)).txid_hex
        if self.refuse:
            request.setResponseCode(400)
            return b"sendrawtransaction RPC error: " + json.dumps(self.refuse).encode()
        self.taken.append(hexstring)
        return txid.encode()


def file_bytes(path):
    """:returns: the whole content of the file at ``path``."""
    with open(path, "rb") as f:
        return f.read()


def secret_file(test, text, mode=0o600):
    """A file holding ``text`` with ``mode``."""
    path = test.mktemp()
    with open(path, "w") as f:
        f.write(text + "\n")
    os.chmod(path, mode)
    return path


class BitcoinBroadcastTests(TestCase):
    """The broadcaster against the fake Bitcoin Core."""

    timeout = 60

    async def serve(self, resource):
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Site(resource))
        self.addCleanup(port.stopListening)
        return f"http://127.0.0.1:{port.getHost().port}/"

    async def start(self, url, path=None, **settings):
        self.path = path or self.mktemp() + ".sqlite"
        self.sender = RecordingSender()
        settings.setdefault("auth", rpc.BasicAuth(cookie_file=secret_file(self, COOKIE)))
        settings.setdefault("delay", parse_delay("0"))
        endpoints = [url] if isinstance(url, str) else url
        backend = BroadcastProvider(self.sender, TOPOLOGY, reactor, chain="bitcoin", endpoints=endpoints,
                                    path=self.path, retry_first=0.05, retry_max=0.2, **settings)
        await backend.startService()
        self.addCleanup(lambda: backend.running and backend.stopService())
        return backend

    async def test_once_per_txid_with_answers(self):
        """
        Real segwit and taproot transactions are broadcast, each once; the
        same again is a duplicate, answered and not sent to the node.
        """
        core = FakeBitcoinCore()
        backend = await self.start(await self.serve(core))
        for txid in (TAPROOT, SEGWIT_V0, TAPROOT, LEGACY):
            await backend.deliver(final(tx_message(mainnet(txid), [make_surb()])))
        await wait_for(lambda: len(self.sender.sent) == 4, "four answers")
        self.assertEqual(backend.queued_count, 0)
        self.assertEqual(sorted(core.taken), sorted(mainnet(t).hex() for t in (TAPROOT, SEGWIT_V0, LEGACY)))
        got = {(a.outcome, a.txid.hex()) for a in answers(self.sender)}
        self.assertEqual(got, {("broadcast", TAPROOT), ("broadcast", SEGWIT_V0), ("broadcast", LEGACY),
                               ("duplicate", TAPROOT)})
        self.assertEqual(backend.outcomes["duplicate"], 1)
        self.assertEqual(core.calls, 3)

    async def test_random_endpoint_and_kept_delay(self):
        """
        Each broadcast goes to one of the endpoints, chosen at random; a
        delay is kept in the queue, so a restart does not shorten it.
        """
        cores = [FakeBitcoinCore(), FakeBitcoinCore()]
        urls = [await self.serve(core) for core in cores]
        backend = await self.start(urls, rng=random.Random(5))
        verifyObject(IProvider, backend)
        for txid in (TAPROOT, SEGWIT_V0, LEGACY):
            await backend.deliver(final(tx_message(mainnet(txid))))
        await wait_for(lambda: backend.queued_count == 0, "three broadcasts")
        self.assertEqual(sorted(len(core.taken) for core in cores), [1, 2])
        await backend.stopService()

        later = await self.start(urls[0], path=self.path, delay=parse_delay("3600"))
        arrived = reactor.seconds()
        await later.deliver(final(tx_message(mainnet(SEGWIT_V0)[:-4] + b"\x01\x00\x00\x00")))
        await later.stopService()
        again = await self.start(urls[0], path=self.path)
        self.assertEqual(again.queued_count, 1)
        db = sqlite3.connect(self.path)
        self.addCleanup(db.close)
        [(due,)] = db.execute("SELECT next_attempt FROM broadcast_queue").fetchall()
        self.assertGreaterEqual(due, arrived + 3600)
        self.assertEqual(sum(core.calls for core in cores), 3)

    async def test_oversized_answer_is_transient(self):
        """A node answer beyond the read limit is not kept: a transient failure."""
        class Huge(Resource):
            isLeaf = True

            def render_POST(self, request):
                return b"x" * (rpc.BODY_LIMIT * 4)

        url = await self.serve(Huge())
        with self.assertRaises(rpc.Transient) as caught:
            await rpc.post(Agent(reactor), reactor, url, b"{}", b"application/json", 5)
        self.assertIn("longer than", str(caught.exception))

    async def test_done_transactions_leave_no_trace_in_the_file(self):
        """Once broadcast, a transaction's bytes are overwritten in the queue file, not just unlinked."""
        core = FakeBitcoinCore()
        core.errors[LEGACY] = [(-28, "Loading block index...")] * 10_000  # stays queued beside it
        counters = Counters()
        backend = await self.start(await self.serve(core), counters=counters)
        raw = mainnet(TAPROOT)
        await backend.deliver(final(tx_message(mainnet(LEGACY))))
        await backend.deliver(final(tx_message(raw)))
        await wait_for(lambda: backend.queued_count == 1, "the broadcast")
        await backend.stopService()
        self.assertFalse(os.path.exists(self.path + "-wal") and os.path.getsize(self.path + "-wal"))
        self.assertTrue(raw[40:120] not in file_bytes(self.path), "the broadcast transaction is still in the file")
        self.assertEqual(counters.get("broadcast.transactions", "broadcast"), 1)

    async def test_what_the_file_keeps_without_secure_delete(self):
        """The check above can fail: without secure_delete the deleted bytes stay in the file."""
        path = self.mktemp()
        queue = DurableQueue(reactor, path, "q", lambda item: None, lambda item, result: None,
                             name="test", secure_delete=False)
        await queue.start()
        kept, done = b"K" * 300, os.urandom(300)
        for body in (kept, done):
            await queue.add(ServiceRequest(os.urandom(16), [], bytes(32), body), delay=3600 if body == kept else 0)
        await wait_for(lambda: queue.queued_count == 1, "the attempt")
        await queue.stop()
        self.assertTrue(done in file_bytes(path), "the deleted payload is not in the file")

    async def test_permanent_rejections_are_not_retried(self):
        """A -26 or -25 ends the attempt: one call, the node's words go back."""
        core = FakeBitcoinCore()
        core.errors[TAPROOT] = [(-26, "min relay fee not met, 0 < 110")]
        core.errors[LEGACY] = [(-25, "bad-txns-inputs-missingorspent")]
        backend = await self.start(await self.serve(core))
        for txid in (TAPROOT, LEGACY):
            await backend.deliver(final(tx_message(mainnet(txid), [make_surb()])))
        await wait_for(lambda: len(self.sender.sent) == 2, "two answers")
        got = {(a.outcome, a.txid.hex(), a.message) for a in answers(self.sender)}
        self.assertEqual(got, {("rejected", TAPROOT, "min relay fee not met, 0 < 110"),
                               ("rejected", LEGACY, "bad-txns-inputs-missingorspent")})
        self.assertEqual((core.calls, core.taken, backend.queued_count), (2, [], 0))

    async def test_transient_errors_are_retried(self):
        """Warm-up (-28) and initial download (-10) are retried until Core takes it."""
        core = FakeBitcoinCore()
        core.errors[SEGWIT_V0] = [(-28, "Loading block index..."), (-10, "Bitcoin Core is downloading blocks...")]
        backend = await self.start(await self.serve(core))
        await backend.deliver(final(tx_message(mainnet(SEGWIT_V0), [make_surb()])))
        await wait_for(lambda: core.taken, "the transaction to be taken")
        self.assertEqual(core.calls, 3)
        self.assertEqual(backend.outcomes["retried"], 2)
        await wait_for(lambda: self.sender.sent, "the answer")
        [answer] = answers(self.sender)
        self.assertEqual((answer.outcome, answer.message), ("broadcast", SEGWIT_V0))

    async def test_already_in_chain_is_a_duplicate(self):
        """-27 (already in the chain) is answered as a duplicate, not retried."""
        core = FakeBitcoinCore()
        core.errors[LEGACY] = [(-27, "Transaction outputs already in utxo set")]
        backend = await self.start(await self.serve(core))
        await backend.deliver(final(tx_message(mainnet(LEGACY), [make_surb()])))
        await wait_for(lambda: self.sender.sent, "the answer")
        [answer] = answers(self.sender)
        self.assertEqual(answer.outcome, "duplicate")
        self.assertEqual((core.calls, backend.outcomes["known"]), (1, 1))

    async def test_wrong_credentials_retry_and_auth_file(self):
        """A 401 is retried, not final; a user:password file (0600) authenticates."""
        core = FakeBitcoinCore(credentials="alice:correct horse")
        url = await self.serve(core)
        wrong = rpc.BasicAuth(auth_file=secret_file(self, "alice:wrong"))
        backend = await self.start(url, auth=wrong)
        await backend.deliver(final(tx_message(mainnet(LEGACY))))
        await wait_for(lambda: core.calls >= 2, "a retry")
        self.assertEqual((core.taken, backend.queued_count), ([], 1))
        await backend.stopService()
        right = rpc.BasicAuth(auth_file=secret_file(self, "alice:correct horse"))
        again = await self.start(url, path=self.path, auth=right)
        await wait_for(lambda: again.queued_count == 0, "the transaction to be taken after the restart")
        self.assertEqual(core.taken, [mainnet(LEGACY).hex()])

    async def test_node_down_survives_restart(self):
        """Queued while no node listens, broadcast after a restart once one does."""
        [port] = _free_ports(1)
        url = f"http://127.0.0.1:{port}/"
        backend = await self.start(url)
        await backend.deliver(final(tx_message(mainnet(TAPROOT))))
        await wait_for(lambda: backend.outcomes["retried"] >= 1, "a failed attempt")
        await backend.stopService()
        core = FakeBitcoinCore()
        listening = await TCP4ServerEndpoint(reactor, port, interface="127.0.0.1").listen(Site(core))
        self.addCleanup(listening.stopListening)
        again = await self.start(url, path=self.path)
        await wait_for(lambda: again.queued_count == 0, "the queue to empty")
        self.assertEqual(core.taken, [mainnet(TAPROOT).hex()])

    async def test_esplora(self):
        """The Esplora API: POST /tx with the hex; a 400 carrying Core's -26 is a rejection."""
        esplora = FakeEsplora()
        url = (await self.serve(esplora)) + "api"
        backend = await self.start(url, api="esplora", auth=None)
        await backend.deliver(final(tx_message(mainnet(TAPROOT), [make_surb()])))
        await wait_for(lambda: self.sender.sent, "the answer")
        esplora.refuse = {"code": -26, "message": "txn-mempool-conflict"}
        await backend.deliver(final(tx_message(mainnet(LEGACY), [make_surb()])))
        await wait_for(lambda: len(self.sender.sent) == 2, "the second answer")
        got = [(a.outcome, a.txid.hex(), a.message) for a in answers(self.sender)]
        self.assertEqual(got, [("broadcast", TAPROOT, TAPROOT), ("rejected", LEGACY, "txn-mempool-conflict")])
        self.assertEqual(esplora.taken, [mainnet(TAPROOT).hex()])

    async def test_invalid_refused_before_anything(self):
        """A coinbase or a truncated transaction is refused at delivery, typed; nothing queued or sent."""
        core = FakeBitcoinCore()
        backend = await self.start(await self.serve(core))
        with self.assertRaises(UnsupportedTransaction):
            await backend.deliver(final(tx_message(mainnet(GENESIS_COINBASE))))
        with self.assertRaises(MalformedTransaction):
            await backend.deliver(final(tx_message(mainnet(TAPROOT)[:-1])))
        self.assertEqual((backend.queued_count, core.calls, self.sender.sent), (0, 0, []))


class CommandLineTests(TestCase):
    """``nym-client broadcast`` checks the transaction before anything else."""

    async def test_not_a_transaction(self):
        """Hex that is not a transaction of the chain: exit 1, the typed reason, nothing opened."""
        from twisted.internet.utils import getProcessOutputAndValue

        missing = self.mktemp()
        command = ["-m", "nymprov.cli.client", "broadcast", "--data-dir", missing, "--topology", missing,
                   "--provider", "x", "--chain", "bitcoin", "--service", "x"]
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("0x" + mainnet(TAPROOT)[:-1].hex() + "\n")
        out, err, code = await getProcessOutputAndValue(sys.executable, command + [path],
                                                        env=os.environ, reactor=reactor)
        self.assertEqual(code, 1)
        self.assertIn(b"MalformedTransaction", err)
        self.assertEqual(out, b"")
        self.assertFalse(os.path.exists(missing))


class PartsTests(SynchronousTestCase):
    """Answers, delays, verdicts, credentials and options."""

    def test_answer_codec(self):
        """An answer round-trips; the message is made printable and cut."""
        answer = decode_answer(encode_answer(2, b"\x11" * 32, "nonce too low\n" + "x" * 500))
        self.assertEqual((answer.outcome, answer.txid), ("rejected", b"\x11" * 32))
        self.assertEqual(len(answer.message), rpc.MESSAGE_LIMIT)
        self.assertTrue(answer.message.startswith("nonce too low?x"))
        for bad in (b"", encode_answer(0, bytes(32), "ok")[:-1], b"\x09" + bytes(34)):
            self.assertRaises(MalformedAnswer, decode_answer, bad)

    def test_delays(self):
        """Fixed, exponential (capped) and uniform delays; nonsense is refused."""
        import random

        rng = random.Random(7)
        self.assertEqual(parse_delay("0")(rng), 0.0)
        self.assertEqual(parse_delay("2.5")(rng), 2.5)
        samples = [parse_delay("exp:5:20")(rng) for _ in range(2000)]
        self.assertTrue(all(0 <= s <= 20 for s in samples))
        self.assertLess(abs(sum(samples) / len(samples) - 5), 0.6)
        self.assertTrue(all(1 <= parse_delay("uniform:1:3")(rng) <= 3 for _ in range(100)))
        for bad in ("-1", "exp", "exp:1:2:3", "uniform:3:1", "nan", "inf", "gauss:1", "exp:x"):
            self.assertRaises(ValueError, parse_delay, bad)

    def test_ethereum_verdicts(self):
        """Node answers (geth's and anvil's words) map to outcomes or a retry."""
        def answer(code, message):
            return json.dumps({"jsonrpc": "2.0", "id": 1, "error": {"code": code, "message": message}}).encode()

        self.assertEqual(rpc.ethereum_verdict(200, b'{"jsonrpc":"2.0","id":1,"result":"0xab"}'),
                         rpc.Verdict("broadcast", "0xab"))
        self.assertEqual(rpc.ethereum_verdict(200, answer(-32000, "already known")).outcome, "known")
        self.assertEqual(rpc.ethereum_verdict(200, answer(-32003, "nonce too low")),
                         rpc.Verdict("rejected", "nonce too low"))
        self.assertEqual(rpc.ethereum_verdict(200, answer(-32000, "transaction underpriced")).outcome, "rejected")
        for code, message in ((-32000, "txpool is full"), (-32005, "limit exceeded"), (-32603, "internal")):
            self.assertRaises(rpc.Transient, rpc.ethereum_verdict, 200, answer(code, message))
        self.assertEqual(rpc.ethereum_verdict(400, answer(-32000, "invalid sender")).outcome, "rejected")
        quota = answer(-32002, "project ID does not have access")
        for status, body in ((503, b"down"), (200, b"not json"), (429, b""), (200, b'{"id":1}'), (403, quota)):
            self.assertRaises(rpc.Transient, rpc.ethereum_verdict, status, body)

    def test_core_verdicts(self):
        """Core's codes: -25/-26/-22 final, -27 known, the rest (warm-up, IBD) retried."""
        def answer(code, message):
            return json.dumps({"result": None, "error": {"code": code, "message": message}, "id": "1"}).encode()

        self.assertEqual(rpc.bitcoin_core_verdict(500, answer(-22, "TX decode failed")).outcome, "rejected")
        self.assertEqual(rpc.bitcoin_core_verdict(500, answer(-26, "txn-already-known")).outcome, "known")
        self.assertEqual(rpc.bitcoin_core_verdict(500, answer(-27, "Transaction already in block chain")).outcome,
                         "known")
        for code in (-28, -9, -10, -31, -1, -32601):
            self.assertRaises(rpc.Transient, rpc.bitcoin_core_verdict, 500, answer(code, "x"))
        self.assertRaises(rpc.Transient, rpc.bitcoin_core_verdict, 401, b"")

    def test_secret_files(self):
        """Credentials files must be 0600 (a cookie may be 0640); the header never shows in repr."""
        self.assertEqual(rpc.read_secret_file(secret_file(self, "u:p")), "u:p")
        self.assertRaises(ConfigError, rpc.read_secret_file, secret_file(self, "u:p", 0o640))
        self.assertRaises(ConfigError, rpc.read_secret_file, secret_file(self, "u:p", 0o604))
        self.assertEqual(rpc.read_secret_file(secret_file(self, "u:p", 0o640), allow_group=True), "u:p")
        self.assertRaises(ConfigError, rpc.read_secret_file, secret_file(self, "no colon"))
        self.assertRaises(ConfigError, rpc.read_secret_file, self.mktemp())
        auth = rpc.BasicAuth(auth_file=secret_file(self, "u:p"))
        self.assertEqual(auth.header(), b"Basic " + base64.b64encode(b"u:p"))
        self.assertNotIn("u:p", repr(auth))

    def test_options(self):
        """Required options, credentials in URLs, loose secret files and bad delays are usage errors."""
        maker = find_maker("broadcast")
        good = [("chain", "bitcoin"), ("rpc", "http://127.0.0.1:8332,http://127.0.0.2:8332")]
        options = parse_backend_options(maker, good)
        self.assertEqual(options["endpoints"], ["http://127.0.0.1:8332", "http://127.0.0.2:8332"])
        bad = [
            [("rpc", "http://127.0.0.1:8545")],
            [("chain", "dogecoin"), ("rpc", "http://127.0.0.1:1")],
            [("chain", "ethereum")],
            [("chain", "bitcoin"), ("rpc", "http://user:pass@127.0.0.1:8332")],
            good + [("rpc-auth-file", secret_file(self, "u:p", 0o644))],
            good + [("delay", "soon")],
            good + [("api", "electrum")],
        ]
        for pairs in bad:
            self.assertRaises(usage.UsageError, parse_backend_options, maker, pairs)
