"""The ``broadcast`` backend plugin: hand signed transactions to a chain's node, once each."""

import os

from twisted.plugin import IPlugin
from twisted.python import usage
from zope.interface import implementer

from nymprov.interfaces import IProviderMaker
from nymprov.plugins import BackendOptions, positive


def _not_negative(text):
    value = float(text)
    if not value >= 0:
        raise ValueError(f"must be 0 or more, got {text}")
    return value


_not_negative.coerceDoc = ""


class BroadcastOptions(BackendOptions):
    """Options of the broadcaster; ``chain`` and ``rpc`` are required."""

    optParameters = [
        ["chain", None, None, "ethereum or bitcoin (required)"],
        ["rpc", None, None, "comma-separated node URLs; each broadcast picks one at random (required)"],
        ["api", None, "core", "bitcoin only: core (JSON-RPC sendrawtransaction) or esplora (POST /tx)"],
        ["rpc-auth-file", None, None, "file holding USER:PASSWORD for the nodes (mode 0600)"],
        ["rpc-cookie-file", None, None, "bitcoin: Bitcoin Core's .cookie file, read at each call"],
        ["chain-id", None, None, "ethereum: take only transactions signed for this chain id", positive(int)],
        ["delay", None, "exp:5:60", "wait before each broadcast: SECONDS, exp:MEAN[:MAX] or uniform:LOW:HIGH"],
        ["duplicate-window", None, 86400.0, "seconds a txid is remembered, so it is broadcast once",
         _not_negative],
        ["max-size", None, None, "largest transaction in bytes (default: the chain's relay limit)", positive(int)],
        ["timeout", None, 10.0, "seconds for one call to a node", positive(float)],
        ["retry-first", None, 1.0, "seconds before the first retry; doubles each time", positive(float)],
        ["retry-max", None, 300.0, "longest wait between retries, seconds", positive(float)],
        ["max-queue", None, 10000, "transactions queued at most", positive(int)],
        ["queue-file", None, None, "SQLite file of the queue (default: <data-dir>/broadcast.sqlite)"],
    ]

    def postOptions(self):
        from nymprov.backends.broadcast.backend import CHAINS, parse_delay
        from nymprov.backends.broadcast.rpc import BasicAuth
        from nymprov.backends.webproxy import parse_origin
        from nymprov.errors import ConfigError

        if self["chain"] not in CHAINS:
            raise usage.UsageError(f"chain: one of {', '.join(sorted(CHAINS))}")
        self["endpoints"] = [url.strip() for url in (self["rpc"] or "").split(",") if url.strip()]
        if not self["endpoints"]:
            raise usage.UsageError("rpc: the broadcast backend needs at least one node URL")
        for url in self["endpoints"]:
            try:
                parse_origin(url)
            except ValueError as e:
                hint = " (put them in rpc-auth-file)" if "credentials" in str(e) else ""
                raise usage.UsageError(f"rpc: {e}{hint}")
        if self["api"] not in ("core", "esplora"):
            raise usage.UsageError("api: core or esplora")
        if self["rpc-auth-file"] and self["rpc-cookie-file"]:
            raise usage.UsageError("rpc-auth-file and rpc-cookie-file: one or the other")
        try:
            parse_delay(self["delay"])
            self["auth"] = BasicAuth(self["rpc-auth-file"], self["rpc-cookie-file"])
        except ValueError as e:
            raise usage.UsageError(str(e))
        except ConfigError as e:
            raise usage.UsageError(f"rpc credentials: {e}")


@implementer(IPlugin, IProviderMaker)
class BroadcastMaker:
    """Makes :class:`nymprov.backends.broadcast.backend.BroadcastProvider`."""

    name = "broadcast"
    description = "check signed transactions and hand each once to an Ethereum or Bitcoin node"
    options = BroadcastOptions

    def make(self, config, options, sender, topology, reactor, **context):
        """IProviderMaker API"""
        from nymprov.backends.broadcast.backend import QUEUE_FILE, BroadcastProvider, parse_delay

        return BroadcastProvider(
            sender, topology, reactor,
            chain=options["chain"],
            endpoints=options["endpoints"],
            api=options["api"],
            auth=options["auth"],
            path=options["queue-file"] or os.path.join(config.data_dir, QUEUE_FILE),
            delay=parse_delay(options["delay"]),
            duplicate_window=options["duplicate-window"],
            max_size=options["max-size"],
            chain_id=options["chain-id"],
            timeout=options["timeout"],
            retry_first=options["retry-first"],
            retry_max=options["retry-max"],
            max_queue=options["max-queue"],
            counters=context.get("counters"),
        )


broadcast = BroadcastMaker()
