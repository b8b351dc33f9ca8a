"""
The roles between nymprov's parts, declared with zope.interface.

Every method that waits returns a ``Deferred``; nothing here blocks the
reactor thread.  Byte strings are ``bytes``; addresses are 32 bytes.
"""

from zope.interface import Attribute, Interface


class IProvider(Interface):
    """
    What happens to a message that reached its final hop at this provider.

    The node opens the message's envelope (:mod:`nymprov.wire.envelope`)
    and keeps its SURB-ACK: it sends the ACK once, and only once, the
    Deferred that ``deliver`` returns has fired.  A backend never sees an
    ACK and never sends one.
    """

    name = Attribute("Short name of the backend, used in logs and counters.")

    def deliver(message):
        """
        Take responsibility for one message.

        :param message: a :class:`nymprov.wire.envelope.FinalMessage`:
            ``destination``, ``surb_id``, ``body`` (out of its envelope)
            and ``enveloped``.
        :returns: a Deferred that fires once the backend has taken
            responsibility (for the inbox: once the message is committed;
            then the node sends the SURB-ACK), or fails with a
            :class:`nymprov.errors.DeliveryError` subclass, whose
            ``reason`` is counted by the node (and no ACK is sent).  Bad
            input must change no state.
        """


class IInbox(IProvider):
    """
    A backend that keeps messages in the node's ``IInboxStore`` for their
    clients to pull.  The provider serves its client API (register, send,
    pull, ack) only for a backend that provides this; for any other the
    client port is not opened, since a pull could never return anything.
    """


class IMixSender(Interface):
    """
    Sends whole Sphinx packets to other nodes over the mix link.
    """

    def send(address, packet, key_rotation=0):
        """
        Queue ``packet`` for the node at ``address``.

        :param bytes address: a 32-byte Nym node address (an encoded socket
            address, see :mod:`nymprov.sphinx.address`).
        :param bytes packet: a complete Sphinx packet.
        :param int key_rotation: the frame's key-rotation byte (1 odd, 2
            even epoch's key; 0 not known: see ``doc/protocol.md``).  The
            node passes it only when known, so a sender that ignores it
            may keep the two-argument form.
        :returns: ``True`` if the packet was queued, ``False`` if the
            neighbour's bounded queue is full (the caller counts the drop).
        """


class IReplayCache(Interface):
    """
    Remembers the replay tags of processed packets for the life of the
    node's Sphinx key.
    """

    def check_and_record(tag):
        """
        Record ``tag`` unless it was seen before.

        Two copies of one packet arriving together can never both pass: the
        tag is recorded in memory before this returns, and made durable by
        the next commit of the store that owns the cache, before or with any
        message committed after this call.  Usually the answer comes from
        memory and the Deferred has already fired.

        :param bytes tag: a 16-byte replay tag.
        :returns: a Deferred firing with ``True`` if the tag is new (the
            packet may be processed), ``False`` if it is a replay.
        """


class IKeyedReplayCache(Interface):
    """
    Replay tags scoped to the Sphinx key that produced them, so that a key
    retired at the end of its epoch takes all of its tags with it: disk and
    memory are bounded by the live keys and their traffic, not by history.

    ``key_id`` is 32 bytes, the SHA-256 of the Sphinx public key (see
    :func:`nymprov.node.epochkeys.replay_key_id`).  A node has at most three
    keys open at once (previous, current, next).  A shared store (several
    processes, one PostgreSQL) implements it with a ``key_id`` column in
    its tag table, ``retire_key`` being one ``DELETE ... WHERE key_id``.
    """

    def open_key(key_id):
        """
        Make ``key_id``'s tags checkable (loading those already stored).

        :returns: a Deferred firing once :meth:`check_and_record` may be
            called with ``key_id``.
        """

    def check_and_record(key_id, tag):
        """
        As :meth:`IReplayCache.check_and_record`, within ``key_id``'s tags
        only: a tag seen under another key is new here.

        :returns: a Deferred firing with ``True`` if new, ``False`` if a
            replay; failing with ``KeyError`` if ``key_id`` is not open.
        """

    def retire_key(key_id):
        """
        Forget every tag recorded under ``key_id``, in memory and on disk.

        :returns: a Deferred firing once they are gone (a retired key's
            packets are refused before they reach the cache).
        """

    def open_keys():
        """:returns: the ``key_id`` values open now (a frozenset)."""

    def close():
        """
        Commit what is pending and release every key's storage.

        :returns: a Deferred firing once done.
        """


class IInboxStore(Interface):
    """
    Clients, their access tokens and their messages.

    Tokens are never stored: only ``sha256(token)``.  ``now`` arguments are
    seconds since the epoch from the injected clock.
    """

    def start():
        """
        Open the store.

        :returns: Deferred firing once the store is ready.
        """

    def close():
        """
        Commit everything pending and release the store.

        :returns: Deferred firing once every accepted write is durable.
        """

    def register(address, token_hash, now):
        """
        Create the client ``address``, or replace its token hash (which
        revokes the previous token).

        :returns: Deferred firing with ``None`` once committed.
        """

    def authenticate(address, token_hash):
        """
        Compare ``token_hash`` with the stored hash, in constant time.

        :returns: Deferred firing with ``True`` or ``False``.
        """

    def is_registered(address):
        """
        :returns: ``True`` if ``address`` is a registered client.  Answered
            from memory, so that the hot path does not wait on the database.
        """

    def append(address, message, now):
        """
        Add one message to the inbox of ``address``.

        Writes are grouped: many appends share one transaction.

        :returns: Deferred firing with ``None`` once the message is
            committed, or failing with ``UnknownDestination`` or ``InboxFull``
            (see :mod:`nymprov.errors`); a refused message changes nothing.
        """

    def lease(address, max_count, now, lease_seconds):
        """
        Hand out at most ``max_count`` messages of ``address``, oldest first,
        that are not under a live lease.

        :returns: Deferred firing with ``(lease_id, messages)``, where
            ``lease_id`` is a positive int and ``messages`` is a list of
            ``(message_id, bytes)``; with ``(0, [])`` when there is nothing.
        """

    def ack(address, lease_id):
        """
        Delete the messages under lease ``lease_id`` of ``address``.

        :returns: Deferred firing with the number of messages deleted, or
            failing with ``UnknownLease`` if there is no such live lease.
        """

    def is_revoked(address):
        """
        :returns: whether the operator revoked ``address``: its token hash
            is ``nymprov.storage.tokens.REVOKED_TOKEN_HASH`` (registering
            that hash revokes; FORGET ends it).  Registering any other
            hash for a revoked address fails with ``ClientRevoked``.
            Answered from memory, the same on every process that shares
            the store.
        """

    def release(address, lease_id):
        """
        End lease ``lease_id`` of ``address`` before it lapses: its messages
        may be pulled again at once (the connection that pulled them ended
        without an ACK).  An unknown or lapsed lease is no error.

        :returns: Deferred firing with the number of messages released.
        """

    def forget(address):
        """
        Delete the client ``address``, its token and its whole inbox.

        :returns: Deferred firing with ``None`` once committed.
        """

    def expire(now):
        """
        Delete messages older than the store's expiry and return expired
        leases' messages to their inboxes.

        :returns: Deferred firing with the number of messages deleted.
        """

    def sizes():
        """
        :returns: Deferred firing with a dict of gauges: ``clients``,
            ``messages``, ``bytes``.
        """


class ITopology(Interface):
    """
    The nodes of the mixnet that this node knows about.
    """

    def is_first_layer(address):
        """
        :param bytes address: a 32-byte Nym node address.
        :returns: ``True`` if ``address`` is a mix node of the first layer,
            to which a client's packet may be relayed unchanged.
        """

    def is_known_node(address):
        """
        :param bytes address: a 32-byte Nym node address.
        :returns: ``True`` if ``address`` is any node of the mixnet (a mix
            node of any layer or a provider), to which a mix node may send
            a packet on.
        """


class IProviderMaker(Interface):
    """
    Makes a provider backend; found with ``twisted.plugin.getPlugins`` in the
    ``nymprov.plugins`` package and chosen with ``--backend NAME``.  A plugin
    is an object providing ``twisted.plugin.IPlugin`` and this interface.
    """

    name = Attribute("The backend's name, as given to --backend.")
    description = Attribute("One line saying what the backend does.")
    options = Attribute(
        "A nymprov.plugins.BackendOptions subclass (a twisted.python.usage.Options"
        " whose optParameters are the backend's options, each given on the"
        " command line as --backend-option NAME=VALUE)."
    )

    def make(config, options, sender, topology, reactor, **context):
        """
        Make the backend.

        :param config: the node's :class:`nymprov.provider.config.ProviderConfig`.
        :param options: a parsed instance of ``options``.
        :param sender: the node's ``IMixSender``, for replies through SURBs.
        :param topology: the node's ``ITopology``: a SURB's first hop must be
            a first-layer mix node in it.
        :param reactor: the reactor.
        :param context: more of the node's parts by name; today ``store``
            (its ``IInboxStore``).  Ignore what you do not use.
        :returns: an ``IProvider``; if it also provides ``IService`` it is
            started after the store opens and stopped before it closes.
        """
