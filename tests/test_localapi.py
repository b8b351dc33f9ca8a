"""
The running client's local WebSocket API, through real loopback TCP, with
two running clients on an in-process mixnet: address, send, reply through
SURBs, typed errors for malformed requests, loopback only.
"""

import json
import os

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from nymprov.client import ClientKeys, NymClient
from nymprov.client.daemon import API_FILE, ClientDaemon
from nymprov.client.localapi import connect_local_api
from nymprov.errors import ConfigError
from tests.test_e2e_backends import InProcessMixnet

#: Longest wait for one API message.
MESSAGE_WAIT = 30.0


async def next_of(app, predicate=lambda m: True):
    """The next message from ``app`` for which ``predicate`` holds, within MESSAGE_WAIT."""
    while True:
        d = app.next_message()
        d.addTimeout(MESSAGE_WAIT, reactor)
        message = await d
        if predicate(message):
            return message


class LocalApiTests(TestCase):
    """Applications talk to running clients through the API only."""

    timeout = 120

    async def daemon(self, net, provider, **kwargs):
        client = NymClient(ClientKeys.generate(), net.topology, provider.identity, reactor=reactor,
                           mean_delay=0.002, pull_interval=0.2, ack_timeout=5.0)
        data_dir = self.mktemp()
        os.makedirs(data_dir)
        daemon = ClientDaemon(client, reactor, kwargs.pop("listen", "tcp:0:interface=127.0.0.1"),
                              data_dir=data_dir, **kwargs)
        await daemon.start()
        self.addCleanup(daemon.stop)
        return daemon, data_dir

    async def app(self, daemon):
        app = await connect_local_api(reactor, daemon.url)
        self.addCleanup(app.close)
        return app

    async def test_address_send_and_reply_through_surbs(self):
        """
        An application learns its address, sends to another running
        client's application, which replies through the SURBs; each side
        sees the acknowledgement and the other's message.
        """
        net = InProcessMixnet(self, "inbox", ())
        await net.start()
        alice, alice_dir = await self.daemon(net, net.home_node)
        bob, _ = await self.daemon(net, net.service_node)
        with open(f"{alice_dir}/{API_FILE}") as f:
            self.assertEqual(json.load(f)["url"], alice.url)
        app_a, app_b = await self.app(alice), await self.app(bob)

        app_b.request({"type": "selfAddress"})
        bob_address = (await next_of(app_b))["address"]
        self.assertEqual(bob_address, str(bob.client.address))

        app_a.request({"type": "send", "recipient": bob_address, "message": "hello bob",
                       "replySurbs": 2, "id": "m1"})
        self.assertEqual(await next_of(app_a, lambda m: m.get("id") == "m1"), {"type": "acknowledged", "id": "m1"})
        received = await next_of(app_b, lambda m: m["type"] == "received")
        self.assertEqual((received["message"], received["isReply"]), ("hello bob", False))
        self.assertIsNotNone(received["senderTag"])

        app_b.request({"type": "reply", "senderTag": received["senderTag"],
                       "messageBase64": "AAEC/w==", "id": 7})
        self.assertEqual((await next_of(app_b, lambda m: m.get("id") == 7))["type"], "acknowledged")
        answer = await next_of(app_a, lambda m: m["type"] == "received")
        self.assertEqual((answer["messageBase64"], answer["isReply"], answer["senderTag"]),
                         ("AAEC/w==", True, None))
        # Both went through the shaped stream.
        self.assertGreater(alice.client.stats()["stream.sent.real"], 0)

    async def test_malformed_requests_get_typed_errors_and_the_client_runs_on(self):
        """Each bad request gets its typed error; the API and the client keep working."""
        net = InProcessMixnet(self, "inbox", ())
        await net.start()
        alice, _ = await self.daemon(net, net.home_node)
        app = await self.app(alice)
        other = str(ClientKeys.generate().address(net.service_node.identity))
        cases = [
            (b"not json", "malformed_json"),
            (b"\xff\xfe", "malformed_json"),
            (b"[1, 2]", "malformed_request"),
            (b'{"type": 3}', "malformed_request"),
            (b'{"type": "fly"}', "unknown_type"),
            (b'{"type": "send", "message": "x"}', "missing_field"),
            (b'{"type": "send", "recipient": "nope", "message": "x"}', "invalid_address"),
            (json.dumps({"type": "send", "recipient": other}).encode(), "missing_field"),
            (json.dumps({"type": "send", "recipient": other, "message": "x", "replySurbs": -1}).encode(),
             "bad_field"),
            (json.dumps({"type": "send", "recipient": other, "messageBase64": "@@"}).encode(), "bad_field"),
            (b'{"type": "reply", "senderTag": "00", "message": "x"}', "unknown_sender_tag"),
            (b'{"type": "reply", "message": "x"}', "missing_field"),
        ]
        for payload, kind in cases:
            app.send_raw(payload)
            error = await next_of(app)
            self.assertEqual((error["type"], error["kind"]), ("error", kind), payload)
        app.send_raw(b"\x00\x01", binary=True)
        self.assertEqual((await next_of(app))["kind"], "binary_not_supported")
        app.request({"type": "selfAddress", "id": 1})
        self.assertEqual((await next_of(app))["address"], str(alice.client.address))
        app.request({"type": "stats", "id": 2})
        stats = await next_of(app)
        self.assertEqual((stats["type"], stats["id"]), ("stats", 2))
        self.assertIn("stream.queue_length", stats["stats"])
        self.assertEqual(alice.counters.get("api.errors", "malformed_json"), 2)
        self.assertTrue(alice.client.running)

    async def test_loopback_only_unless_told(self):
        """A non-loopback API address is refused unless allow_public says so."""
        net = InProcessMixnet(self, "inbox", ())
        await net.start()
        client = NymClient(ClientKeys.generate(), net.topology, net.home_node.identity, reactor=reactor)
        daemon = ClientDaemon(client, reactor, "tcp:0:interface=0.0.0.0")
        with self.assertRaises(ConfigError):
            await daemon.start()
        self.assertFalse(client.running)
        public, _ = await self.daemon(net, net.home_node, listen="tcp:0:interface=0.0.0.0", allow_public=True)
        self.assertTrue(public.url.startswith("ws://0.0.0.0:"))

    async def test_a_web_page_cannot_drive_the_client(self):
        """
        A browser sends the page's Origin with every WebSocket handshake,
        so any page the user opens could reach ws://127.0.0.1:1977: a
        handshake with an Origin is refused (403, counted) unless the
        operator allowed that origin; programs, which send none, connect.
        """
        net = InProcessMixnet(self, "inbox", ())
        await net.start()
        daemon, _ = await self.daemon(net, net.home_node)
        with self.assertRaises(ConnectionError):
            await connect_local_api(reactor, daemon.url, origin="https://evil.example")
        self.assertEqual(daemon.counters.get("api.refused", "origin"), 1)
        app = await self.app(daemon)
        app.request({"type": "selfAddress", "id": 1})
        self.assertEqual((await next_of(app))["address"], str(daemon.client.address))

        allowing, _ = await self.daemon(net, net.home_node, allowed_origins=["http://localhost:3000"])
        page = await connect_local_api(reactor, allowing.url, origin="http://localhost:3000")
        self.addCleanup(page.close)
        page.request({"type": "selfAddress", "id": 2})
        self.assertEqual((await next_of(page))["id"], 2)
        with self.assertRaises(ConnectionError):
            await connect_local_api(reactor, allowing.url, origin="http://localhost:3001")
        self.assertEqual(allowing.counters.get("api.refused", "origin"), 1)
