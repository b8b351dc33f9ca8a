"""
The default backend: keep each message in its client's inbox until pulled.
"""

from zope.interface import implementer

from nymprov.interfaces import IInboxStore, IProvider


@implementer(IProvider)
class InboxProvider:
    """
    Delivers messages into an ``IInboxStore``; a message is accepted once
    the store has committed it.

    The SURB identifier is not kept: the inbox holds the plaintext only,
    and the client recognises its own replies inside it.
    """

    name = "inbox"

    def __init__(self, store, clock):
        assert IInboxStore.providedBy(store), store
        self._store = store
        self._clock = clock

    def deliver(self, destination, surb_id, message):
        """IProvider API"""
        return self._store.append(destination, message, self._clock.seconds())
