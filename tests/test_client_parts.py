"""
The client's pure parts: fragments, sealing, records, keys and addresses.
"""

import os
import stat

from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.public import PrivateKey
from twisted.trial.unittest import SynchronousTestCase

from nymprov.wire.fragments import Fragment, MalformedFragment, Reassembler, split_message
from nymprov.client.identity import (
    ClientAddress,
    InvalidClientAddress,
    load_or_create_client_keys,
    load_token,
    save_token,
)
from nymprov.client.sealing import (
    CHUNK_SIZE,
    KIND_MESSAGE,
    Record,
    UnreadableBody,
    open_body,
    reply_private_key,
    seal,
)
from nymprov.errors import ConfigError
from nymprov.wire.envelope import MAX_BODY_WITH_ACK


class FragmentTests(SynchronousTestCase):
    """Splitting and reassembly."""

    @settings(max_examples=60)
    @given(st.binary(max_size=5000), st.integers(1, 700), st.randoms(use_true_random=False),
           st.lists(st.integers(0, 200), max_size=10))
    def test_any_order_with_copies_gives_the_message_once(self, data, chunk, rng, copies):
        """Shuffled fragments with duplicates reassemble to the message exactly once."""
        fragments = split_message(b"m" * 16, data, chunk)
        wire = [f.to_bytes() for f in fragments]
        wire += [wire[i % len(wire)] for i in copies]
        rng.shuffle(wire)
        reassembler = Reassembler()
        results = [reassembler.add(Fragment.from_bytes(w)) for w in wire]
        self.assertEqual([r for r in results if r is not None], [data])
        self.assertEqual(reassembler.partial_count, 0)

    @settings(max_examples=60)
    @given(st.binary(max_size=100))
    def test_arbitrary_bytes_decode_or_raise_typed(self, data):
        """Bytes either decode to a fragment or raise MalformedFragment."""
        try:
            fragment = Fragment.from_bytes(data)
        except MalformedFragment:
            return
        self.assertEqual(fragment.to_bytes(), data)

    def test_empty_message_is_one_fragment(self):
        """An empty message still travels, as one empty fragment."""
        [fragment] = split_message(b"e" * 16, b"", CHUNK_SIZE)
        self.assertEqual(Reassembler().add(fragment), b"")

    def test_conflicting_count_is_refused_without_change(self):
        """A fragment claiming another count than its siblings is refused."""
        reassembler = Reassembler()
        reassembler.add(Fragment(b"c" * 16, 0, 2, b"a"))
        self.assertRaises(MalformedFragment, reassembler.add, Fragment(b"c" * 16, 1, 3, b"b"))
        self.assertEqual(reassembler.add(Fragment(b"c" * 16, 1, 2, b"b")), b"ab")

    def test_partial_messages_are_bounded(self):
        """Past max_partial the oldest incomplete message is dropped."""
        reassembler = Reassembler(max_partial=2)
        for i in range(3):
            reassembler.add(Fragment(bytes([i]) * 16, 0, 2, b"x"))
        self.assertEqual(reassembler.partial_count, 2)
        self.assertIsNone(reassembler.add(Fragment(bytes([0]) * 16, 1, 2, b"y")))

    def test_state_round_trip(self):
        """A saved state resumes reassembly and still ignores completed ids."""
        reassembler = Reassembler()
        reassembler.add(Fragment(b"p" * 16, 0, 2, b"first "))
        self.assertEqual(reassembler.add(Fragment(b"d" * 16, 0, 1, b"done")), b"done")
        resumed = Reassembler.from_state(reassembler.state())
        self.assertEqual(resumed.add(Fragment(b"p" * 16, 1, 2, b"second")), b"first second")
        self.assertIsNone(resumed.add(Fragment(b"d" * 16, 0, 1, b"done")))
        self.assertRaises(MalformedFragment, Reassembler.from_state, {"done": ["zz"], "partial": []})


class SealingTests(SynchronousTestCase):
    """End-to-end sealing and records."""

    def test_a_full_fragment_fits_the_body(self):
        """A fragment of CHUNK_SIZE bytes, sealed, is exactly the largest body."""
        [fragment] = split_message(b"f" * 16, bytes(CHUNK_SIZE), CHUNK_SIZE)
        body = seal(bytes(PrivateKey.generate().public_key), b"h" * 16, fragment.to_bytes())
        self.assertEqual(len(body), MAX_BODY_WITH_ACK)

    def test_recipient_opens_others_cannot(self):
        """Only the recipient's key opens a body; a stranger gets UnreadableBody."""
        recipient, stranger = PrivateKey.generate(), PrivateKey.generate()
        body = seal(bytes(recipient.public_key), b"h" * 16, b"secret fragment")
        self.assertEqual(open_body(recipient, body), (b"secret fragment", b"h" * 16, False))
        self.assertRaises(UnreadableBody, open_body, stranger, body)
        self.assertNotIn(b"secret fragment", body)

    def test_reply_key_is_derived_from_the_hint(self):
        """A body sealed to the hint's reply key opens as a reply."""
        sender = PrivateKey.generate()
        hint = os.urandom(16)
        body = seal(bytes(reply_private_key(sender, hint).public_key), hint, b"answer")
        self.assertEqual(open_body(sender, body), (b"answer", hint, True))
        self.assertNotEqual(bytes(reply_private_key(sender, hint).public_key), bytes(sender.public_key))

    @settings(max_examples=50)
    @given(st.binary(max_size=300), st.lists(st.binary(max_size=400), max_size=3))
    def test_record_round_trip(self, data, surbs):
        """Records encode and decode to themselves."""
        extra = (b"h" * 16, b"k" * 32) if surbs else (None, None)
        record = Record(KIND_MESSAGE, data, tuple(surbs), *extra)
        self.assertEqual(Record.from_bytes(record.to_bytes()), record)

    @settings(max_examples=100)
    @given(st.binary(max_size=200))
    def test_arbitrary_records_decode_or_raise_typed(self, data):
        """
        Bytes either decode to a record, which encodes back to the same
        bytes, or raise UnreadableBody.
        """
        try:
            record = Record.from_bytes(data)
        except UnreadableBody:
            return
        self.assertEqual(record.to_bytes(), data)


class IdentityTests(SynchronousTestCase):
    """Key files, tokens and addresses."""

    def test_keys_are_private_files_and_reload(self):
        """Keys are created 0600 once and read back the same."""
        directory = self.mktemp()
        keys = load_or_create_client_keys(directory)
        for name in ("identity.key", "encryption.key"):
            mode = stat.S_IMODE(os.stat(os.path.join(directory, name)).st_mode)
            self.assertEqual(mode, 0o600)
        again = load_or_create_client_keys(directory)
        self.assertEqual(again.identity_public_bytes, keys.identity_public_bytes)
        self.assertEqual(again.encryption_public_bytes, keys.encryption_public_bytes)

    def test_token_round_trip_and_private(self):
        """The token file is 0600 and holds the token; a readable file is refused."""
        directory = self.mktemp()
        load_or_create_client_keys(directory)
        self.assertIsNone(load_token(directory))
        save_token(directory, b"t" * 32)
        self.assertEqual(load_token(directory), b"t" * 32)
        os.chmod(os.path.join(directory, "token"), 0o644)
        self.assertRaises(ConfigError, load_token, directory)

    @settings(max_examples=30)
    @given(st.binary(min_size=32, max_size=32), st.binary(min_size=32, max_size=32),
           st.binary(min_size=32, max_size=32))
    def test_address_text_round_trip(self, identity, encryption, provider):
        """An address printed in base58 parses back to itself."""
        address = ClientAddress(identity, encryption, provider)
        text = str(address)
        self.assertEqual(text.count("."), 1)
        self.assertEqual(text.count("@"), 1)
        self.assertEqual(ClientAddress.parse(text), address)

    def test_bad_addresses_are_refused(self):
        """Malformed address text raises InvalidClientAddress."""
        good = str(ClientAddress(b"a" * 32, b"b" * 32, b"c" * 32))
        for text in ["", "x", good.replace("@", "#"), good.replace(".", ""), good + "0",
                     "1.1@1", good.replace(good[0], "l", 1), "é" + good]:
            self.assertRaises(InvalidClientAddress, ClientAddress.parse, text)
