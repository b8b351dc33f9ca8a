"""
Pulls that keep up with what a shaped client's own traffic brings back,
and a running client that never drops what it took from its provider.
"""

from twisted.internet.defer import DeferredQueue
from twisted.trial.unittest import SynchronousTestCase

from nymprov.client.daemon import MAX_BUFFERED, ClientDaemon
from nymprov.client.received import ReceivedMessage
from nymprov.client.stream import PULL_HEADROOM, pull_interval_keeping_up
from nymprov.metrics import Counters


class PullIntervalTests(SynchronousTestCase):
    """The interval is shortened only where the returning traffic needs it."""

    def test_testnet_rates(self):
        """λ_P 100/s and λ_L 10/s bring back 220 messages a second: 64 every 0.19 s."""
        interval = pull_interval_keeping_up(0.5, 64, 100.0, 10.0, 0.0)
        self.assertAlmostEqual(interval, 64 / (PULL_HEADROOM * 220))
        self.assertGreaterEqual(64 / interval, 220 * PULL_HEADROOM - 1e-9)

    def test_drop_cover_brings_back_acks_only(self):
        """Drop cover comes back as its ACK alone; drops add their ACKs."""
        self.assertAlmostEqual(pull_interval_keeping_up(10.0, 64, 100.0, 0.0, 20.0, cover="drop"),
                               64 / (PULL_HEADROOM * 120))

    def test_slow_streams_keep_the_configured_interval(self):
        """Where the configured interval already keeps up, it stays."""
        self.assertEqual(pull_interval_keeping_up(0.5, 64, 1.0, 1.0, 0.0), 0.5)

    def test_unshaped(self):
        """An unshaped client has no payload stream; nothing to keep up with but loops."""
        self.assertEqual(pull_interval_keeping_up(1.0, 64, 100.0, 0.0, 0.0, shaped=False), 1.0)


class _App:
    receives = True

    def __init__(self):
        self.events = []

    def send_json(self, event):
        self.events.append(event)


class _Client:
    """What the daemon uses of a NymClient, without a network."""

    address = "client"

    def __init__(self):
        self.inbox = DeferredQueue()
        self.counters = Counters()
        self.pulls_held = False


class BufferTests(SynchronousTestCase):
    """Messages wait for an application; a full buffer holds the pulls instead of dropping."""

    def test_full_buffer_holds_pulls_and_drops_nothing(self):
        client = _Client()
        daemon = ClientDaemon(client, reactor=None)
        daemon._read_next()
        total = MAX_BUFFERED + 70  # one more pull's worth past the bound
        for n in range(total):
            client.inbox.put(ReceivedMessage(b"%d" % n, b""))
            self.assertEqual(client.pulls_held, n + 1 >= MAX_BUFFERED)
        self.assertEqual(client.counters.snapshot().get("api.dropped.buffer_full"), None)
        app = _App()
        daemon.attach(app)
        self.assertEqual([e["message"] for e in app.events], [str(n) for n in range(total)])
        self.assertFalse(client.pulls_held)
        client.inbox.put(ReceivedMessage(b"live", b""))
        self.assertEqual(app.events[-1]["message"], "live")
