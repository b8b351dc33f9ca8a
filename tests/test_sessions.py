"""
Tests for the live sessions by address, as told of changes made by other
processes sharing a store.
"""

from twisted.internet.defer import fail, succeed
from twisted.trial.unittest import SynchronousTestCase

from nymprov.metrics import Counters
from nymprov.provider.sessions import Sessions

ALICE = b"A" * 32
BOB = b"B" * 32


class _Session:
    def __init__(self, token_hash):
        self.token_hash = token_hash
        self.revoked = False

    def revoke(self):
        self.revoked = True


class SessionsTests(SynchronousTestCase):
    def setUp(self):
        self.sessions = Sessions(Counters())

    def bound(self, address, token_hash):
        session = _Session(token_hash)
        self.sessions.bind(address, session)
        return session

    def test_revoke_stale_keeps_the_current_token(self):
        """
        A rotation told by another process ends the sessions of that
        address with another token, and no other session.
        """
        old, new, other = self.bound(ALICE, b"old"), self.bound(ALICE, b"new"), self.bound(BOB, b"old")
        revocations = self.sessions.revocations
        self.assertEqual(self.sessions.revoke_stale(ALICE, b"new"), 1)
        self.assertEqual((old.revoked, new.revoked, other.revoked), (True, False, False))
        self.assertGreater(self.sessions.revocations, revocations)

    def test_revoke_stale_forgotten(self):
        """
        A forget told by another process ends every session of the address.
        """
        first, second = self.bound(ALICE, b"t"), self.bound(ALICE, b"u")
        self.assertEqual(self.sessions.revoke_stale(ALICE, None), 2)
        self.assertTrue(first.revoked and second.revoked)

    def test_recheck(self):
        """
        After notices may have been missed, each session asks the store,
        and those whose token no longer holds end; a failed lookup ends
        nothing.
        """
        kept, stale = self.bound(ALICE, b"good"), self.bound(ALICE, b"bad")
        unknown = self.bound(BOB, b"x")
        answers = {(ALICE, b"good"): succeed(True), (ALICE, b"bad"): succeed(False),
                   (BOB, b"x"): fail(OSError("database away"))}
        self.sessions.recheck(lambda address, token_hash: answers[(address, token_hash)])
        self.assertEqual((kept.revoked, stale.revoked, unknown.revoked), (False, True, False))
        self.flushLoggedErrors(OSError)
