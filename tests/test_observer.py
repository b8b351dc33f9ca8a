"""
The passive-observer test through real loopback TCP: a running client
(``nym-client run`` in a child process, driven through its local API), a
real provider (in this process) and, on the link between them, an observer
(``observer_tap.py``, a relay in a process of its own) that records the
time and length of every frame the client sends.  The provider checks the
size of every packet it accepts.

The gate for the distribution is the deterministic variant in
test_client_stream (a Clock and a seeded RNG: strict p >= 0.01 for shaped,
and the same check must fail unshaped).  Here the client is a real process
on a shared machine whose load stalls it at random, so this variant asserts
what stays true under load: one frame size, counts within Poisson noise,
and a KS p-value far from the unshaped one (REALTIME_ALPHA), which the
unshaped client must still fall below.
"""

import dataclasses
import os
import random
import sys

from scipy.stats import ks_2samp
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from nymprov.client import ClientKeys
from nymprov.client.localapi import connect_local_api
from nymprov.cli.clientrun import running_api
from nymprov.sphinx import PacketSize
from tests.support import wait_for
from tests.test_client_cli import start_running_client
from tests.test_client_stream import KS_ALPHA, gaps
from nymprov.tools.testnet import _free_ports
from nymprov.topology import Topology, dump_topology
from nymprov.wire.clientapi.requests import Send
from tests.test_e2e_backends import InProcessMixnet

_TAP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "observer_tap.py")


class _Tap(ProcessProtocol):
    """The observer process; ``ready`` fires when it listens."""

    def __init__(self):
        self.ready = Deferred()
        self.ended = Deferred()

    def outReceived(self, data):
        if not self.ready.called and b"listening" in data:
            self.ready.callback(None)

    def processEnded(self, reason):
        if not self.ready.called:
            self.ready.errback(reason)
        self.ended.callback(None)


def tapped_topology(net, port, path):
    """``net``'s topology with the home provider's client API at ``port`` (the tap)."""
    providers = [dataclasses.replace(p, client_port=port) if p == net.home_node else p
                 for p in net.topology.providers]
    dump_topology(Topology(net.topology.mixnodes, providers), path)
    return path


def read_tap(path):
    """``(time, frame length)`` of each SEND frame the tap saw."""
    with open(path) as f:
        rows = [line.split() for line in f if line.strip()]
    return [(float(t), int(length)) for t, kind, length in rows if int(kind) == Send.TYPE]

#: Seconds of each stretch of observation (idle and busy alternate).
STRETCH = 2.0
#: Packets the provider takes from the client before observing starts.
WARM_UP_PACKETS = 20
#: The real-time KS threshold: unshaped bursts give p around 1e-50, a shaped
#: client on an idle machine p around 0.4; a loaded machine's stalls move
#: the shaped p down by orders of magnitude, never to this.
REALTIME_ALPHA = 1e-4
SEND_RATE = 40.0
LOOP_RATE = 5.0
MESSAGES = 100
BURSTS = 4


class PassiveObserverTests(TestCase):
    """What the provider sees of one client, idle and busy."""

    timeout = 120

    async def observe(self, *client_args):
        """
        :returns: ``(idle, idle gaps, busy, busy gaps)``: the ``(time,
            frame length)`` of each SEND frame the observer saw while the
            user sent nothing, and while the user sent 100 messages of 1 to
            10 fragments in 4 bursts (alternating stretches of 2 s), and
            the inter-packet times within those stretches.
        """
        net = InProcessMixnet(self, "inbox", ())
        await net.start()
        seen = []
        node = net.services["home"].node
        accept = node.send_from_client

        def recording(first_hop, packet):
            seen.append((reactor.seconds(), len(packet)))
            return accept(first_hop, packet)

        node.send_from_client = recording
        [tap_port] = _free_ports(1)
        record = os.path.abspath(self.mktemp())
        tap = _Tap()
        tap_process = reactor.spawnProcess(
            tap, sys.executable, [sys.executable, _TAP, str(tap_port), str(net.home_node.client_port), record],
            env=dict(os.environ))
        self.addCleanup(lambda: tap.ended.called or (tap_process.signalProcess("KILL"), tap.ended)[1])
        await tap.ready
        topology = tapped_topology(net, tap_port, os.path.abspath(self.mktemp()))
        data_dir = os.path.abspath(self.mktemp())
        running = start_running_client(
            self, "--data-dir", data_dir, "--topology", topology,
            "--provider", net.home_node.identity_base58, "--mean-delay-ms", "2",
            "--send-rate", str(SEND_RATE), "--loop-rate", str(LOOP_RATE),
            "--api-listen", "tcp:0:interface=127.0.0.1", *client_args)
        await wait_for(lambda: running_api(data_dir) or running.ended.called, "the running client", 60)
        self.assertFalse(running.ended.called, running.output)
        app = await connect_local_api(reactor, running_api(data_dir))
        self.addCleanup(app.close)
        # The mixnet's first packets open its links and caches; observe
        # after that settles, so that a stall of this process (which
        # records the times) does not bunch the idle sample.
        await wait_for(lambda: len(seen) >= WARM_UP_PACKETS, "the client's first packets", 60)

        # The stretches are the observer's windows (what it records), not
        # waits for something not to happen.  Idle and busy alternate, so that the load of this
        # shared machine, which drifts over seconds, weighs on both alike.
        rng = random.Random(5)
        recipient = str(ClientKeys.generate().address(net.service_node.identity))
        stretches = []
        for burst in range(BURSTS):
            start = reactor.seconds()
            await deferLater(reactor, STRETCH, lambda: None)
            stretches.append(("idle", start, reactor.seconds()))
            start = reactor.seconds()
            for _ in range(MESSAGES // BURSTS):
                size = rng.randrange(1, 11) * 1500 - rng.randrange(1, 400)
                app.request({"type": "send", "recipient": recipient, "message": "x" * size, "id": burst})
            await deferLater(reactor, STRETCH, lambda: None)
            stretches.append(("busy", start, reactor.seconds()))
        # Every packet the provider took had one size.
        self.assertEqual({size for _, size in seen}, {PacketSize.REGULAR.packet_size})
        observed = read_tap(record)
        # The provider takes what the tap saw: on a loaded machine a burst
        # may still be on its way, so wait (bounded) for it to arrive.
        await wait_for(lambda: len(seen) >= len(observed) - 3, "the provider to take the tapped frames", 60)
        samples = {"idle": ([], []), "busy": ([], [])}
        for kind, start, end in stretches:
            frames = [r for r in observed if start <= r[0] < end]
            samples[kind][0].extend(frames)
            samples[kind][1].extend(gaps([t for t, _ in frames]))
        (idle, idle_gaps), (busy, busy_gaps) = samples["idle"], samples["busy"]
        print(f"\n{client_args or 'shaped'}: {len(idle)} packets idle, {len(busy)} busy,"
              f" {BURSTS} stretches of {STRETCH:g} s each")
        return idle, idle_gaps, busy, busy_gaps

    async def test_shaped_client_looks_the_same_idle_and_busy(self):
        """
        Every packet has one size; the inter-packet times pass a two-sample
        KS test (scipy.stats.ks_2samp) at p >= REALTIME_ALPHA (the strict
        p >= 0.01 is the deterministic gate in test_client_stream); the
        counts agree within Poisson noise.
        """
        idle, idle_gaps, busy, busy_gaps = await self.observe()
        # One frame length on the wire (a SEND of a 2413-byte packet).
        self.assertEqual(len({size for _, size in idle + busy}), 1)
        result = ks_2samp(idle_gaps, busy_gaps)
        print(f"KS statistic {result.statistic:.3f}, p = {result.pvalue:.3f}", file=sys.stderr)
        self.assertGreaterEqual(result.pvalue, REALTIME_ALPHA, result)
        # Two Poisson counts of one mean: 6 sigma, since a stall of the
        # client's process moves packets across a window's edge.
        self.assertLess(abs(len(idle) - len(busy)), 6 * (len(idle) + len(busy)) ** 0.5)

    async def test_unshaped_client_fails_the_same_test(self):
        """
        The unshaped mode's bursts show: the KS test tells idle from busy
        even at the real-time threshold, so that threshold still separates.
        """
        idle, idle_gaps, busy, busy_gaps = await self.observe("--unshaped")
        result = ks_2samp(idle_gaps, busy_gaps)
        print(f"unshaped: KS statistic {result.statistic:.3f}, p = {result.pvalue:.2e}", file=sys.stderr)
        self.assertLess(result.pvalue, min(KS_ALPHA, REALTIME_ALPHA), result)
