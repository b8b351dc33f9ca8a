"""
The broadcaster against a real Ethereum node: ``anvil`` (Foundry's local
node) on loopback, behind a provider running ``broadcast --chain
ethereum`` in an in-process mixnet.  Transactions are signed with
``eth-account`` for anvil's funded dev accounts.

The binary is found through ``NYMPROV_ANVIL`` (``.ci/run`` installs the
npm package ``@foundry-rs/anvil-linux-amd64`` and sets it) or ``anvil`` on
the ``PATH``; without either the tests are skipped, saying so.
"""

import json
import os
import shutil
import sys
from io import BytesIO

from eth_account import Account
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web.client import Agent, FileBodyProducer, readBody
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from nymprov.client.services import PayloadTooLarge
from nymprov.tools.testnet import _free_ports

from .support import wait_for
from .test_e2e_backends import InProcessMixnet

#: anvil's first two dev accounts (its default mnemonic; public test keys).
SENDER_KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
RECIPIENT = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
CHAIN_ID = 31337  # anvil's default


def anvil_binary():
    """:returns: the anvil executable, or raises SkipTest saying why not."""
    path = os.environ.get("NYMPROV_ANVIL") or shutil.which("anvil")
    if not path or not os.access(path, os.X_OK):
        raise SkipTest("anvil is not installed: .ci/run installs the npm package "
                       "@foundry-rs/anvil-linux-amd64 and sets NYMPROV_ANVIL to its bin/anvil")
    return path


class _Ended(ProcessProtocol):
    def __init__(self):
        self.ended = Deferred()

    def processEnded(self, reason):
        self.ended.callback(None)


async def call(agent, url, method, params):
    """One JSON-RPC call; returns the whole answer."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode()
    response = await agent.request(b"POST", url.encode(), Headers({b"content-type": [b"application/json"]}),
                                   FileBodyProducer(BytesIO(body)))
    return json.loads(await readBody(response))


class RecordingProxy(Resource):
    """Passes JSON-RPC calls on to anvil, keeping each call and its answer."""

    isLeaf = True

    def __init__(self, agent, target):
        Resource.__init__(self)
        self._agent = agent
        self._target = target
        self.calls = []  # (method, params, answer)

    def sent(self):
        """The ``eth_sendRawTransaction`` calls so far."""
        return [c for c in self.calls if c[0] == "eth_sendRawTransaction"]

    def render_POST(self, request):
        request_body = json.loads(request.content.read())

        def answer(reply):
            self.calls.append((request_body["method"], request_body["params"], reply))
            request.setHeader(b"content-type", b"application/json")
            request.write(json.dumps(reply).encode())
            request.finish()

        d = Deferred.fromCoroutine(call(self._agent, self._target, request_body["method"],
                                        request_body["params"]))
        d.addCallback(answer)
        return NOT_DONE_YET


class AnvilTests(TestCase):
    """Transactions through the mixnet to anvil."""

    timeout = 180

    async def start_anvil(self):
        binary = anvil_binary()
        [port] = _free_ports(1)
        ended = _Ended()
        process = reactor.spawnProcess(ended, binary, [binary, "--host", "127.0.0.1", "--port", str(port),
                                                       "--chain-id", str(CHAIN_ID)], env=None)

        async def stop():
            if process.pid is not None:
                process.signalProcess("TERM")
            await ended.ended

        self.addCleanup(lambda: Deferred.fromCoroutine(stop()))
        self.agent = Agent(reactor)
        url = f"http://127.0.0.1:{port}/"
        for _ in range(600):  # anvil starts in well under a second; 30 s at most
            try:
                answer = await call(self.agent, url, "eth_chainId", [])
                break
            except ConnectionRefusedError:
                await deferLater(reactor, 0.05, lambda: None)
        else:
            self.fail("anvil did not answer within 30 s")
        self.assertEqual(int(answer["result"], 16), CHAIN_ID)
        return url

    async def rpc(self, method, *params):
        answer = await call(self.agent, self.anvil, method, list(params))
        return answer["result"]

    async def sign(self, nonce, value):
        fee = int(await self.rpc("eth_gasPrice"), 16) * 2
        return Account.from_key(SENDER_KEY).sign_transaction(dict(
            nonce=nonce, to=RECIPIENT, value=value, gas=21000, maxFeePerGas=fee,
            maxPriorityFeePerGas=10**9, chainId=CHAIN_ID))

    async def test_broadcast_duplicate_rejected_and_cli(self):
        """
        A signed transfer goes through the mixnet and is mined; the answer
        carries the txid anvil reported; the same transaction again is a
        duplicate that anvil never sees; one with a used nonce is rejected
        with anvil's reason, once; ``nym-client broadcast`` does the same
        from the command line.
        """
        self.anvil = await self.start_anvil()
        proxy = RecordingProxy(self.agent, self.anvil)
        listening = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Site(proxy))
        self.addCleanup(listening.stopListening)
        options = ["chain=ethereum", f"rpc=http://127.0.0.1:{listening.getHost().port}/", "delay=0",
                   f"chain-id={CHAIN_ID}", "retry-first=0.1", "retry-max=0.5", "timeout=5"]
        net = InProcessMixnet(self, "broadcast", options)
        await net.start()
        _client, service = await net.client()
        backend = net.services["service"].backend

        balance_before = int(await self.rpc("eth_getBalance", RECIPIENT, "latest"), 16)
        nonce = int(await self.rpc("eth_getTransactionCount", Account.from_key(SENDER_KEY).address, "latest"), 16)
        transfer = await self.sign(nonce, 10**18)
        answer = await service.broadcast(bytes(transfer.raw_transaction), timeout=60)
        [(_, params, reply)] = proxy.sent()
        self.assertEqual(params, ["0x" + bytes(transfer.raw_transaction).hex()])
        self.assertEqual(answer.outcome, "broadcast")
        self.assertEqual(answer.message, reply["result"])
        self.assertEqual(answer.txid, bytes(transfer.hash))
        receipt = await self.rpc("eth_getTransactionReceipt", reply["result"])
        self.assertEqual((receipt["status"], receipt["transactionHash"]), ("0x1", reply["result"]))
        balance_after = int(await self.rpc("eth_getBalance", RECIPIENT, "latest"), 16)
        self.assertEqual(balance_after - balance_before, 10**18)

        again = await service.broadcast(bytes(transfer.raw_transaction), timeout=60)
        self.assertEqual((again.outcome, again.txid), ("duplicate", bytes(transfer.hash)))
        self.assertEqual(len(proxy.sent()), 1)

        stale = await self.sign(nonce, 5)  # the nonce the transfer used
        refused = await service.broadcast(bytes(stale.raw_transaction), timeout=60)
        self.assertEqual((refused.outcome, refused.txid), ("rejected", bytes(stale.hash)))
        self.assertIn("nonce too low", refused.message)
        # The attempt is over (its row gone) after one call: no retry can follow.
        self.assertEqual((len(proxy.sent()), backend.queued_count), (2, 0))
        self.assertEqual(backend.outcomes["rejected"], 1)
        self.assertIsNone(await self.rpc("eth_getTransactionReceipt", "0x" + bytes(stale.hash).hex()))

        # Not a transaction: counted by the node under its reason, never sent.
        counters = net.services["service"].counters
        await service.submit(b"\x02" + os.urandom(120))
        await wait_for(lambda: counters.get("packets.dropped", "tx_malformed") == 1, "the refusal to be counted")
        # Too large for one packet beside its reply block: refused before sending.
        bulky = Account.from_key(SENDER_KEY).sign_transaction(dict(
            nonce=nonce + 1, to=RECIPIENT, value=1, gas=100_000, maxFeePerGas=10**10,
            maxPriorityFeePerGas=10**9, chainId=CHAIN_ID, data=b"\x01" * 900))
        with self.assertRaises(PayloadTooLarge):
            await service.broadcast(bytes(bulky.raw_transaction), timeout=60)
        self.assertEqual(len(proxy.sent()), 2)

        await self.cli_broadcast(net, await self.sign(nonce + 1, 7), proxy)
        outcomes = {o: counters.get("broadcast.transactions", o) for o in ("broadcast", "duplicate", "rejected")}
        self.assertEqual(outcomes, {"broadcast": 2, "duplicate": 1, "rejected": 1})

    async def cli_broadcast(self, net, signed, proxy):
        """``nym-client broadcast`` in a subprocess, the hex on stdin."""
        data_dir = os.path.join(net.directory, "cli-client")
        command = [sys.executable, "-m", "nymprov.cli.client", "broadcast", "--data-dir", data_dir,
                   "--topology", os.path.join(net.directory, "topology.json"),
                   "--provider", net.home_node.identity_base58, "--mean-delay-ms", "2",
                   "--chain", "ethereum", "--service", net.service_node.identity_base58, "--wait", "60"]
        out = await run(command, ("0x" + bytes(signed.raw_transaction).hex() + "\n").encode())
        txid = bytes(signed.hash).hex()
        self.assertEqual(out["code"], 0, out)
        self.assertIn(b"connecting once by itself", out["stderr"])
        self.assertEqual(out["stdout"].decode().splitlines(), [f"txid 0x{txid}", f"broadcast {txid}: 0x{txid}"])
        self.assertEqual(len(proxy.sent()), 3)
        receipt = await self.rpc("eth_getTransactionReceipt", "0x" + txid)
        self.assertEqual(receipt["status"], "0x1")


class _Collect(ProcessProtocol):
    def __init__(self, stdin):
        self._stdin = stdin
        self.out, self.err = [], []
        self.done = Deferred()

    def connectionMade(self):
        self.transport.write(self._stdin)
        self.transport.closeStdin()

    def outReceived(self, data):
        self.out.append(data)

    def errReceived(self, data):
        self.err.append(data)

    def processEnded(self, reason):
        self.done.callback({"code": reason.value.exitCode, "stdout": b"".join(self.out),
                            "stderr": b"".join(self.err)})


async def run(command, stdin):
    """Run ``command`` to its end with ``stdin``; returns code, stdout, stderr."""
    collect = _Collect(stdin)
    reactor.spawnProcess(collect, command[0], command, env=os.environ.copy())
    return await collect.done
