"""
The passive-observer test through real loopback TCP: a running client
(``nym-client run`` in a child process, driven through its local API) and a
real provider (in this process), which records the time and size of every
packet the client hands it.  The fast variant on a Clock is in
test_client_stream.
"""

import os
import random
import sys

from scipy.stats import ks_2samp
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from nymprov.client import ClientKeys
from nymprov.client.localapi import connect_local_api
from nymprov.cli.clientrun import running_api
from nymprov.sphinx import PacketSize
from tests.support import wait_for
from tests.test_client_cli import start_running_client
from tests.test_client_stream import KS_ALPHA, gaps
from tests.test_e2e_backends import InProcessMixnet

#: Seconds of each observation window (idle, then busy).
WINDOW = 8.0
#: Seconds between the client's first packet and the idle window.
WARM_UP = 3.0
SEND_RATE = 40.0
LOOP_RATE = 5.0
MESSAGES = 100
BURSTS = 10


class PassiveObserverTests(TestCase):
    """What the provider sees of one client, idle and busy."""

    timeout = 120

    async def observe(self, *client_args):
        """
        :returns: ``(idle, busy)``: the ``(time, size)`` of each packet the
            provider received from the client in a window while its user
            sent nothing, then in one while the user sent 100 messages of
            1 to 10 fragments in 10 bursts.
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
        data_dir = os.path.abspath(self.mktemp())
        running = start_running_client(
            self, "--data-dir", data_dir, "--topology", os.path.abspath(os.path.join(net.directory, "topology.json")),
            "--provider", net.home_node.identity_base58, "--mean-delay-ms", "2",
            "--send-rate", str(SEND_RATE), "--loop-rate", str(LOOP_RATE),
            "--api-listen", "tcp:0:interface=127.0.0.1", *client_args)
        await wait_for(lambda: running_api(data_dir) or running.ended.called, "the running client", 60)
        self.assertFalse(running.ended.called, running.output)
        app = await connect_local_api(reactor, running_api(data_dir))
        self.addCleanup(app.close)
        await wait_for(lambda: seen, "the client's first packet")
        # The mixnet's first packets open its links and caches; observe
        # after that settles, so that a stall of this process (which
        # records the times) does not bunch the idle sample.
        await deferLater(reactor, WARM_UP, lambda: None)

        idle_start = reactor.seconds()
        await deferLater(reactor, WINDOW, lambda: None)
        busy_start = reactor.seconds()
        rng = random.Random(5)
        recipient = str(ClientKeys.generate().address(net.service_node.identity))
        for burst in range(BURSTS):
            for _ in range(MESSAGES // BURSTS):
                size = rng.randrange(1, 11) * 1500 - rng.randrange(1, 400)
                app.request({"type": "send", "recipient": recipient,
                             "message": "x" * size, "id": burst})
            await deferLater(reactor, WINDOW / BURSTS, lambda: None)
        end = reactor.seconds()
        idle = [r for r in seen if idle_start <= r[0] < busy_start]
        busy = [r for r in seen if busy_start <= r[0] < end]
        print(f"\n{client_args or 'shaped'}: {len(idle)} packets idle, {len(busy)} busy in {WINDOW:g} s windows")
        return idle, busy

    async def test_shaped_client_looks_the_same_idle_and_busy(self):
        """
        Every packet has one size; the inter-packet times pass a two-sample
        KS test (scipy.stats.ks_2samp) at p >= 0.01; the counts agree within
        Poisson noise.
        """
        idle, busy = await self.observe()
        self.assertEqual({size for _, size in idle + busy}, {PacketSize.REGULAR.packet_size})
        result = ks_2samp(gaps([t for t, _ in idle]), gaps([t for t, _ in busy]))
        print(f"KS statistic {result.statistic:.3f}, p = {result.pvalue:.3f}", file=sys.stderr)
        self.assertGreaterEqual(result.pvalue, KS_ALPHA, result)
        self.assertLess(abs(len(idle) - len(busy)), 4 * (len(idle) + len(busy)) ** 0.5)

    async def test_unshaped_client_fails_the_same_test(self):
        """The unshaped mode's bursts show: the KS test tells idle from busy."""
        idle, busy = await self.observe("--unshaped")
        result = ks_2samp(gaps([t for t, _ in idle]), gaps([t for t, _ in busy]))
        print(f"unshaped: KS statistic {result.statistic:.3f}, p = {result.pvalue:.2e}", file=sys.stderr)
        self.assertLess(result.pvalue, KS_ALPHA, result)
