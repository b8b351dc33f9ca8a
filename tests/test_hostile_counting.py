"""
Every packet fate is counted: after a mixed run over real loopback
sockets, received = delivered + forwarded + dropped (by reason), exactly.
"""

import os

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from nymprov.sphinx import Destination, Node, PacketSize, build_packet
from nymprov.wire.frames import encode_frame

from tests.support import wait_for
from tests.test_integration import ProviderFixture


def dropped(counters):
    """:returns: ``{reason: count}`` of the dropped packets."""
    return {reason: value for name, reason, labels, value in counters.items()
            if name == "packets.dropped" and value}


class MixLinkCountingTests(ProviderFixture, TestCase):
    """The mix link's packets add up."""

    async def test_mixed_run_adds_up(self):
        """
        Good, replayed, malformed, oversize and unknown-destination packets,
        and complete frames that came in the same read as a bad header:
        each is delivered or dropped under its reason, none is lost.
        """
        service = await self.start_provider(store="sqlite")
        _key, address, _token, _session = await self.register(service)
        [node_address] = service.node.own_addresses

        route = [Node(node_address, service.keys.sphinx.public_bytes)]

        def frame(message, destination=address, size=PacketSize.REGULAR):
            packet = build_packet(message, route, [0], Destination(destination, os.urandom(16)),
                                  payload_size=size.payload_size)
            return encode_frame(packet)

        good = [frame(b"good %d" % i) for i in range(5)]
        replayed = good[:2]
        def corrupted(frame):
            # A byte of the routing information (after the 3-byte frame
            # header and the 32-byte group element): the MAC fails.
            return frame[:40] + bytes([frame[40] ^ 1]) + frame[41:]

        malformed = [corrupted(frame(b"tampered %d" % i)) for i in range(3)]
        oversize = [frame(b"o" * 4000, size=PacketSize.EXTENDED16) for _ in range(2)]
        unknown = [frame(b"to nobody", destination=os.urandom(32)) for _ in range(2)]
        link = await self.mix_link(service)
        link.transport.write(b"".join(good + malformed + oversize + unknown))
        await wait_for(lambda: service.counters.get("packets.received", "mix") == 12, "12 packets")
        link.transport.write(b"".join(replayed))

        before_bad = [frame(b"before a bad header %d" % i) for i in range(2)]
        second = await self.mix_link(service)
        second.transport.write(b"".join(before_bad) + b"\x07\x63\x00" + b"\0" * 100)
        await second.closed

        sent = len(good + replayed + malformed + oversize + unknown + before_bad)
        await wait_for(lambda: service.counters.get("packets.received", "mix") == sent, f"{sent} packets")
        counters = service.counters
        await wait_for(lambda: counters.get("packets.delivered") + sum(dropped(counters).values()) == sent,
                       "every packet's fate")
        self.assertEqual(counters.get("packets.delivered"), len(good) + len(before_bad))
        self.assertEqual(dropped(counters), {
            "replay": 2,
            "bad_mac": 3,
            "message_too_large": 2,
            "unknown_destination": 2,
        })
        self.assertEqual(counters.get("packets.forwarded"), 0)
        self.assertEqual(counters.get("mix_link.frame_error", "unknown_size_tag"), 1)
