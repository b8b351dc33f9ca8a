"""
The default backend: keep each message in its client's inbox until pulled.
"""

from twisted.internet.defer import fail
from twisted.logger import Logger
from zope.interface import implementer

from nymprov.interfaces import IInboxStore, IMixSender, IProvider, ITopology
from nymprov.wire.envelope import MalformedEnvelope, decode_envelope, is_envelope


class BadAckHop(MalformedEnvelope):
    """The SURB-ACK's first hop is not a first-layer mix node."""

    reason = "bad_ack_hop"


@implementer(IProvider)
class InboxProvider:
    """
    Delivers messages into an ``IInboxStore``; a message is accepted once
    the store has committed it.

    A message in an envelope (:mod:`nymprov.wire.envelope`) is stored
    without its SURB-ACK, and the ACK is sent into the mixnet only after the
    commit, so that an ACK always means "stored".  Without a ``sender`` (or
    ``topology``) ACKs are not sent; the sender retransmits.

    The SURB identifier is not kept: the inbox holds the plaintext only,
    and the client recognises its own replies inside it.

    :param store: an ``IInboxStore``.
    :param clock: an ``IReactorTime``.
    :param sender: an ``IMixSender`` for SURB-ACKs, or ``None``.
    :param topology: an ``ITopology`` naming the first-layer mixes, or ``None``.
    """

    name = "inbox"
    log = Logger()

    def __init__(self, store, clock, sender=None, topology=None):
        assert IInboxStore.providedBy(store), store
        assert sender is None or IMixSender.providedBy(sender), sender
        assert topology is None or ITopology.providedBy(topology), topology
        self._store = store
        self._clock = clock
        self._sender = sender
        self._topology = topology
        #: ACKs sent, and ACKs that the sender's full queue refused.
        self.acks_sent = 0
        self.acks_dropped = 0

    def deliver(self, destination, surb_id, message):
        """IProvider API"""
        if not is_envelope(message):
            return self._store.append(destination, message, self._clock.seconds())
        try:
            envelope = decode_envelope(message)
            if envelope.has_ack and self._topology is not None:
                # Checked before storing, so a refused message changes nothing.
                if not self._topology.is_first_layer(envelope.ack_first_hop):
                    raise BadAckHop("SURB-ACK first hop is not a first-layer mix")
        except MalformedEnvelope as e:
            return fail(e)
        # Without an ACK the stored form is the payload itself: no copy.
        stored = envelope.stored() if envelope.has_ack else message
        d = self._store.append(destination, stored, self._clock.seconds())
        if envelope.has_ack:
            d.addCallback(self._send_ack, envelope)
        return d

    def _send_ack(self, _, envelope):
        if self._sender is None or self._topology is None:
            return None
        if self._sender.send(envelope.ack_first_hop, envelope.ack_packet):
            self.acks_sent += 1
        else:
            # The message is stored; the sender merely retransmits a copy,
            # which its recipient drops as a duplicate.
            self.acks_dropped += 1
            self.log.debug("SURB-ACK dropped: first hop queue full")
        return None
