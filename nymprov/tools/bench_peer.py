"""
One client of ``nym-client bench``, in a process of its own, so that the
senders' packet building and the receiver's pulls get cores of their own
as they would on users' machines, instead of sharing the benchmark's one.

It speaks lines over standard input and output with the benchmark:

- the receiver prints ``address <client address>`` once started, then
  ``got <index> <seconds>`` for every message that arrives (the seconds
  from send to arrival: ``time.monotonic`` is one clock for every process
  of a Linux machine);
- a sender prints ``ready``, sends the messages that ``send <first>
  <count>`` asks for, and on ``finish`` waits for their ACKs and prints
  ``done <acknowledged> <failed>``;
- both stop on ``stop`` or when standard input closes.
"""

import struct
import sys
import time

from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.stdio import StandardIO
from twisted.internet.task import deferLater, react
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python import usage

#: What a benchmark message starts with: its send time and its index.
STAMP = struct.Struct(">dI")

#: Seconds a sender waits for its last ACKs on ``finish``.
FINISH_LIMIT = 60.0


class PeerOptions(usage.Options):
    synopsis = "Usage: python -m nymprov.tools.bench_peer [options] (send | receive)"
    optParameters = [
        ["topology", None, None, "the testnet's topology file"],
        ["provider", None, None, "this client's provider (identity, base58)"],
        ["recipient", None, None, "the receiver's address (senders)"],
        ["size", None, 1000, "bytes per message", int],
        ["mean-delay", None, 0.0, "mean per-hop delay, seconds", float],
        ["pull-interval", None, 0.2, "seconds between pulls", float],
        ["pull-batch", None, 64, "messages per pull at most", int],
        ["send-rate", None, None, "shape sending at this λ_P (default: unshaped)", float],
    ]

    def parseArgs(self, role):
        if role not in ("send", "receive"):
            raise usage.UsageError(f"unknown role {role!r}")
        self["role"] = role

    def postOptions(self):
        for required in ("topology", "provider"):
            if not self[required]:
                raise usage.UsageError(f"--{required} is required")
        if self["role"] == "send" and not self["recipient"]:
            raise usage.UsageError("a sender needs --recipient")


class _Commands(LineOnlyReceiver):
    """The benchmark's side of the pipe: its lines to ``handle``, ours out."""

    delimiter = b"\n"

    def __init__(self):
        self.handle = lambda words: None
        self.closed = Deferred()

    def lineReceived(self, line):
        words = line.decode("ascii").split()
        if words == ["stop"]:
            self.transport.loseConnection()
        elif words:
            self.handle(words)

    def say(self, *words):
        self.sendLine(" ".join(str(word) for word in words).encode("ascii"))

    def connectionLost(self, reason):
        self.closed.callback(None)


def _client(reactor, options):
    from nymprov.client import ClientKeys, NymClient
    from nymprov.topology import load_topology

    shaping = {"shaped": False}
    if options["send-rate"] is not None:
        shaping = {"shaped": True, "send_rate": options["send-rate"]}
    # Inboxes are drained (a full batch is pulled again at once), so that
    # pulls keep up with the load instead of measuring the pull interval.
    return NymClient(ClientKeys.generate(), load_topology(options["topology"]), options["provider"],
                     reactor=reactor, mean_delay=options["mean-delay"],
                     pull_interval=options["pull-interval"], pull_drain=True,
                     pull_batch=options["pull-batch"], **shaping)


async def _receive(client, commands):
    """Report every message until the benchmark closes the pipe."""

    async def report():
        while True:
            message = await client.inbox.get()
            sent_at, index = STAMP.unpack_from(message.data)
            commands.say("got", index, f"{time.monotonic() - sent_at:.6f}")

    reporting = ensureDeferred(report())
    reporting.addErrback(lambda failure: failure.trap(CancelledError))
    commands.say("address", client.address)
    await commands.closed
    reporting.cancel()


async def _send(reactor, client, commands, options):
    """Send what the benchmark asks for until it closes the pipe."""
    from nymprov.client.identity import ClientAddress

    recipient = ClientAddress.parse(options["recipient"])
    padding = bytes(max(0, options["size"] - STAMP.size))
    settled = {"acknowledged": 0, "failed": 0}

    def count(result, outcome):
        settled[outcome] += 1

    async def finish():
        # Waits without cancelling: a send that is only slow still counts.
        deadline = reactor.seconds() + FINISH_LIMIT
        while sum(settled.values()) < sent and reactor.seconds() < deadline:
            await deferLater(reactor, 0.1, lambda: None)
        retransmitted = client.counters.get("packets.sent", "retransmission")
        commands.say("done", settled["acknowledged"], sent - settled["acknowledged"], retransmitted)

    sent = 0

    def handle(words):
        nonlocal sent
        if words[0] == "send":
            first, how_many = int(words[1]), int(words[2])
            for index in range(first, first + how_many):
                d = client.send(recipient, STAMP.pack(time.monotonic(), index) + padding)
                d.addCallbacks(count, count, callbackArgs=("acknowledged",), errbackArgs=("failed",))
                sent += 1
        elif words[0] == "finish":
            ensureDeferred(finish())

    commands.handle = handle
    commands.say("ready")
    await commands.closed


async def _main(reactor, options):
    commands = _Commands()
    StandardIO(commands, reactor=reactor)
    client = _client(reactor, options)
    await client.start()
    try:
        if options["role"] == "receive":
            await _receive(client, commands)
        else:
            await _send(reactor, client, commands, options)
    finally:
        await client.stop()


def main(args=None):
    options = PeerOptions()
    try:
        options.parseOptions(sys.argv[1:] if args is None else args)
    except usage.UsageError as e:
        print(f"bench_peer: {e}", file=sys.stderr)
        return 2
    react(lambda reactor: ensureDeferred(_main(reactor, options)))


if __name__ == "__main__":
    sys.exit(main())
