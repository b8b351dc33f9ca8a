"""
Cover packets, built exactly like the client's data packets: a regular
packet over a fresh route with per-hop Poisson delays, carrying an envelope
with a SURB-ACK and a sealed full-size fragment, so that neither the own
provider nor a mix can tell them from real ones.
"""

from nymprov.wire.fragments import split_message
from nymprov.client.sealing import ACK_ID_LENGTH, CHUNK_SIZE, HINT_LENGTH, KIND_COVER, Record, seal
from nymprov.wire.envelope import encode_envelope


class CoverBuilder:
    """
    :param keys: the client's :class:`nymprov.client.identity.ClientKeys`.
    :param router: the client's :class:`nymprov.client.routes.Router`.
    :param topology: the :class:`nymprov.topology.Topology`.
    :param own_provider: the client's provider node.
    :param rng: a ``random.Random``.
    """

    def __init__(self, keys, router, topology, own_provider, rng):
        self._keys = keys
        self._router = router
        self._topology = topology
        self._own_provider = own_provider
        self._rng = rng

    def _envelope(self, seal_key):
        # A cover record padded to one whole chunk: a data packet's body is
        # as long as the largest fragment's, whatever the message.
        record = Record(KIND_COVER, bytes(CHUNK_SIZE - 2)).to_bytes()
        [fragment] = split_message(self._rng.randbytes(16), record, CHUNK_SIZE)
        body = seal(seal_key, self._rng.randbytes(HINT_LENGTH), fragment.to_bytes())
        # A SURB-ACK like every data packet's; its id is unknown to the
        # client and the ACK is ignored when it comes back.
        ack_hop, ack_packet = self._router.ack(
            self._keys.identity_public_bytes, encode_envelope(self._rng.randbytes(ACK_ID_LENGTH)))
        return encode_envelope(body, ack_hop, ack_packet)

    def loop(self):
        """:returns: ``(first_hop, packet)``: a loop back to this client."""
        return self._router.forward(
            self._envelope(self._keys.encryption_public_bytes), self._keys.identity_public_bytes,
            self._own_provider)

    def drop(self):
        """
        :returns: ``(first_hop, packet)``: a packet to a random provider,
            addressed to that provider's own identity, which is no
            registered client: the provider drops it (``unknown_destination``).
        """
        provider = self._rng.choice(self._topology.providers)
        return self._router.forward(
            self._envelope(self._rng.randbytes(32)), provider.identity, provider)
