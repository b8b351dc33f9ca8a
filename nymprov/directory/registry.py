"""
What the directory decides: which descriptors it accepts, when a silent
node drops out, and the network document of an epoch.
"""

from dataclasses import dataclass, replace

from twisted.logger import Logger

from nymprov.netdoc.descriptor import verify_descriptor
from nymprov.netdoc.document import NetworkDocument, sign_document
from nymprov.netdoc.errors import (
    FutureTimestamp,
    IdentityConflict,
    NoUsableKey,
    NotAdmitted,
    StaleTimestamp,
    UnknownEpoch,
)
from nymprov.netdoc.signed import key_text


@dataclass(frozen=True)
class _Entry:
    descriptor: object
    contents: bytes
    received: float


class Registry:
    """
    The live descriptors, in memory and in a :class:`DescriptorStore`.

    :param store: a :class:`nymprov.directory.store.DescriptorStore`.
    :param signing_key: the directory's ``nacl.signing.SigningKey``.
    :param epochs: the :class:`nymprov.netdoc.Epochs` of the network.
    :param float expiry: seconds after its last accepted descriptor that a
        node drops out; also how old a descriptor may be when it arrives.
    :param float grace: seconds that nodes keep accepting a retired key,
        announced in the document's parameters.
    :param float max_skew: how far in the future a timestamp may be.
    :param admitted: a set of admitted 32-byte identities, or ``None`` to
        admit any.
    :param counters: a :class:`nymprov.metrics.Counters`.
    """

    log = Logger()

    def __init__(self, store, signing_key, epochs, *, expiry, grace, max_skew, admitted, counters, rates=None):
        self._store = store
        self._key = signing_key
        self.epochs = epochs
        self.expiry = expiry
        self.grace = grace
        self.max_skew = max_skew
        self.rates = dict(rates or {})  # shaping rates published to clients
        self._admitted = None if admitted is None else frozenset(admitted)
        self._counters = counters
        self._entries = {}  # identity -> _Entry
        # Signed documents by epoch, valid while nothing changed and no
        # included node has expired: epoch -> (generation, until, bytes).
        self._documents = {}
        self._generation = 0

    @property
    def public_key(self):
        """The directory's 32-byte Ed25519 public key."""
        return self._key.verify_key.encode()

    @property
    def parameters(self):
        return {
            "epoch_length": self.epochs.length,
            "epoch_zero": self.epochs.start,
            "expiry": self.expiry,
            "grace": self.grace,
            **self.rates,
        }

    def load(self, now):
        """Read the stored descriptors back, dropping expired or unreadable ones."""
        stale = []
        for identity, contents, _timestamp, received in self._store.load():
            try:
                descriptor = verify_descriptor(bytes(contents))
            except Exception:
                stale.append(identity)
                continue
            if received < now - self.expiry or descriptor.identity != identity:
                stale.append(identity)
                continue
            self._entries[descriptor.identity] = _Entry(descriptor, bytes(contents), received)
        self._store.delete(stale)
        self._generation += 1
        return len(self._entries)

    def __len__(self):
        return len(self._entries)

    def identities(self):
        return frozenset(self._entries)

    # -- publishing --------------------------------------------------------

    def publish(self, contents, now):
        """
        Check and take one signed descriptor.

        :returns: the accepted :class:`nymprov.netdoc.Descriptor`.
        :raises DocumentError: the typed reason it was refused (nothing
            stored changed); counted under ``descriptors.refused``.
        """
        try:
            descriptor = self._check(contents, now)
        except Exception as e:
            self.count_refusal(getattr(e, "reason", "error"))
            raise
        self._store.put(descriptor.identity, contents, descriptor.timestamp, now)
        self._entries[descriptor.identity] = _Entry(descriptor, bytes(contents), now)
        self._generation += 1
        self._counters.incr("descriptors.accepted")
        return descriptor

    def count_refusal(self, reason):
        """Count a refused descriptor under ``descriptors.refused.REASON``."""
        self._counters.incr("descriptors.refused", reason)

    def _check(self, contents, now):
        descriptor = verify_descriptor(contents)
        identity = descriptor.identity
        if self._admitted is not None and identity not in self._admitted:
            raise NotAdmitted(f"{key_text(identity)} is not on the admission list")
        if descriptor.timestamp > now + self.max_skew:
            raise FutureTimestamp(f"timestamp {descriptor.timestamp} is ahead of {int(now)} by more than {self.max_skew:g} s")
        if descriptor.timestamp < now - self.expiry:
            raise StaleTimestamp(f"timestamp {descriptor.timestamp} is older than {self.expiry:g} s")
        held = self._entries.get(identity)
        if held is not None and descriptor.timestamp <= held.descriptor.timestamp:
            raise StaleTimestamp("not newer than the descriptor held for this identity")
        current = self.epochs.number_at(now)
        if not any(k.epoch in (current, current + 1) for k in descriptor.sphinx_keys):
            raise NoUsableKey(f"no Sphinx key for epoch {current} or {current + 1}")
        mine = {k.key for k in descriptor.sphinx_keys}
        for other in self._live(now):
            if other.identity == identity:
                continue
            if (other.mix_host, other.mix_port) == (descriptor.mix_host, descriptor.mix_port):
                raise IdentityConflict(f"mix_address {descriptor.mix_address} belongs to another node")
            if mine & {k.key for k in other.sphinx_keys}:
                raise IdentityConflict("a Sphinx key belongs to another node")
        return descriptor

    def _live(self, now):
        cutoff = now - self.expiry
        return [e.descriptor for e in self._entries.values() if e.received >= cutoff]

    # -- expiry ------------------------------------------------------------

    def expire(self, now):
        """
        Forget nodes silent for longer than the expiry.

        :returns: how many were forgotten.
        """
        cutoff = now - self.expiry
        gone = [identity for identity, e in self._entries.items() if e.received < cutoff]
        if gone:
            self._store.delete(gone)
            for identity in gone:
                del self._entries[identity]
            self._generation += 1
            self._counters.incr("descriptors.expired", amount=len(gone))
            self.log.info("{count} silent node(s) dropped out", count=len(gone))
        return len(gone)

    # -- documents ---------------------------------------------------------

    def document(self, epoch, now):
        """
        The signed network document of ``epoch`` (the current or the next).

        :returns: its envelope bytes.
        :raises UnknownEpoch: for any other epoch.
        """
        current = self.epochs.number_at(now)
        if epoch not in (current, current + 1):
            raise UnknownEpoch(f"epoch {epoch}: served are {current} and {current + 1}")
        cached = self._documents.get(epoch)
        if cached is not None and cached[0] == self._generation and now < cached[1]:
            return cached[2]
        cutoff = now - self.expiry
        included = [
            e for e in self._entries.values() if e.received >= cutoff and e.descriptor.key_for(epoch) is not None
        ]
        nodes = tuple(
            replace(e.descriptor, sphinx_keys=tuple(k for k in e.descriptor.sphinx_keys if k.epoch in (epoch, epoch + 1)))
            for e in sorted(included, key=lambda e: (e.descriptor.role, e.descriptor.layer or 0, e.descriptor.identity))
        )
        document = NetworkDocument(
            directory=self.public_key,
            epoch=epoch,
            epoch_start=self.epochs.start_of(epoch),
            epoch_end=self.epochs.end_of(epoch),
            generated=int(now),
            parameters=self.parameters,
            nodes=nodes,
        )
        contents = sign_document(document, self._key)
        # Until the first included node would expire, or the epoch ends.
        until = min([e.received + self.expiry for e in included] + [self.epochs.end_of(current)])
        self._documents = {k: v for k, v in self._documents.items() if k >= current}
        self._documents[epoch] = (self._generation, until, contents)
        return contents
