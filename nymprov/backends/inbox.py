"""
The default backend: keep each message in its client's inbox until pulled.
"""

from zope.interface import implementer

from nymprov.interfaces import IInbox, IInboxStore


@implementer(IInbox)
class InboxProvider:
    """
    Delivers messages into an ``IInboxStore``; a message is taken once the
    store has committed it (then the node sends its SURB-ACK).

    A message that came in an envelope is stored as the envelope without
    its ACK (:meth:`nymprov.wire.envelope.FinalMessage.inbox_form`), an
    opaque one as it came.  The SURB identifier is not kept: the inbox
    holds the plaintext only, and the client recognises its own replies
    inside it.

    :param store: an ``IInboxStore``.
    :param clock: an ``IReactorTime``.
    """

    name = "inbox"

    def __init__(self, store, clock):
        assert IInboxStore.providedBy(store), store
        self._store = store
        self._clock = clock

    def deliver(self, message):
        """IProvider API"""
        return self._store.append(message.destination, message.inbox_form(), self._clock.seconds())
