"""
Every packet fate is counted: after a mixed run over real loopback
sockets, received = delivered + forwarded + dropped (by reason), exactly.
"""

import os

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory

from nymprov.sphinx import Destination, KeyPair, Node, PacketSize, build_packet, encode_address
from nymprov.wire import clientapi as api
from nymprov.wire.frames import encode_frame

from tests.support import wait_for
from tests.test_integration import FirstLayerMix, ProviderFixture


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


class ClientApiCountingTests(ProviderFixture, TestCase):
    """The client API's packets add up too."""

    async def test_mixed_run_adds_up(self):
        """
        A client SENDs packets over TLS: through the provider's own hop
        (Loopix route), straight to a first-layer mix (Nym route), to
        itself through the provider alone (a route that skips the mixnet:
        refused), replayed, tampered with and for an unknown first hop.
        Each is forwarded, relayed or refused with its typed error and
        counted under its reason.
        """
        arrivals = []
        mix_port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Factory.forProtocol(lambda: FirstLayerMix(arrivals)))
        self.addCleanup(mix_port.stopListening)
        mix_address = encode_address("127.0.0.1", mix_port.getHost().port)
        mix_key = KeyPair.generate()
        service = await self.start_provider(store="sqlite", first_layer=[("127.0.0.1", mix_port.getHost().port)])
        _key, address, _token, session = await self.register(service)
        [own] = service.node.own_addresses
        own_key = service.keys.sphinx.public_bytes

        def through_own_hop(message):
            return build_packet(message, [Node(own, own_key), Node(mix_address, mix_key.public_bytes)], [0, 0],
                                Destination(b"\x55" * 32, os.urandom(16)))

        def straight_to_the_mix(message):
            return build_packet(message, [Node(mix_address, mix_key.public_bytes)], [0],
                                Destination(b"\x55" * 32, os.urandom(16)))

        loopix = [through_own_hop(b"loopix %d" % i) for i in range(4)]
        nym = [straight_to_the_mix(b"nym %d" % i) for i in range(3)]
        to_itself = [build_packet(b"to me %d" % i, [Node(own, own_key)], [0], Destination(address, os.urandom(16)))
                     for i in range(2)]
        tampered = [bytearray(through_own_hop(b"tampered %d" % i)) for i in range(3)]
        for packet in tampered:
            packet[40] ^= 1
        sends = ([(own, p, None) for p in loopix] + [(mix_address, p, None) for p in nym]
                 + [(own, p, api.ErrorCode.ROUTE_REFUSED) for p in to_itself]
                 + [(own, p, api.ErrorCode.REPLAY) for p in loopix[:2]]
                 + [(own, bytes(p), api.ErrorCode.BAD_PACKET) for p in tampered]
                 + [(encode_address("127.0.0.1", 9), p, api.ErrorCode.UNKNOWN_FIRST_HOP) for p in nym[:2]])
        for first_hop, packet, refusal in sends:
            if refusal is None:
                await session.send(first_hop, packet)
            else:
                error = await self.assertFailure(session.send(first_hop, packet), api.RemoteError)
                self.assertEqual(error.code, refusal)

        counters = service.counters
        await wait_for(lambda: len(arrivals) == len(loopix) + len(nym), "the mix to get its packets")
        self.assertEqual(counters.get("packets.received", "client"), len(sends))
        self.assertEqual(counters.get("packets.forwarded"), len(loopix))
        self.assertEqual(counters.get("packets.relayed"), len(nym))
        self.assertEqual(dropped(counters), {"route_refused": 2, "replay": 2, "bad_mac": 3, "unknown_first_hop": 2})
        self.assertEqual(
            counters.get("packets.forwarded") + counters.get("packets.relayed") + counters.get("packets.delivered")
            + sum(dropped(counters).values()), len(sends))
