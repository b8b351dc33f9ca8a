"""Descriptors and network documents: encoding, signatures, typed refusals."""

import json

from hypothesis import given, strategies as st
from nacl.signing import SigningKey
from twisted.trial.unittest import SynchronousTestCase

from nymprov.metrics import Counters
from nymprov.netdoc import (
    BadSignature,
    Epochs,
    MalformedDocument,
    NetworkDocument,
    WrongDirectory,
    WrongEpoch,
    sign_descriptor,
    sign_document,
    verify_descriptor,
    verify_document,
)
from nymprov.netdoc.fetch import DocumentHolder
from nymprov.sphinx.params import PacketSize

from tests.netdoc_support import FakeNode


def _tamper(contents, old, new):
    envelope = json.loads(contents)
    assert old in envelope["signed"], (old, envelope["signed"])
    envelope["signed"] = envelope["signed"].replace(old, new, 1)
    return json.dumps(envelope).encode("utf-8")


def _document(directory_key, epoch, nodes, generated=1000):
    return NetworkDocument(
        directory=directory_key.verify_key.encode(),
        epoch=epoch,
        epoch_start=epoch * 10.0,
        epoch_end=(epoch + 1) * 10.0,
        generated=generated,
        parameters={"epoch_length": 10.0, "epoch_zero": 0.0, "expiry": 30.0, "grace": 2.5},
        nodes=tuple(nodes),
    )


class DescriptorTests(SynchronousTestCase):
    def test_round_trip(self):
        """A signed descriptor verifies back to the same fields, for both roles."""
        for node in (FakeNode("mix", layer=3), FakeNode("provider")):
            descriptor = node.descriptor(1234, epochs=(5, 6))
            self.assertEqual(verify_descriptor(sign_descriptor(descriptor, node.identity_key)), descriptor)

    @given(
        layer=st.integers(1, 4),
        port=st.integers(1, 65535),
        timestamp=st.integers(0, 2**40),
        epochs=st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=3, unique=True),
        sizes=st.lists(st.sampled_from(list(PacketSize)), min_size=1, max_size=5, unique=True),
        version=st.text(max_size=64),
    )
    def test_round_trip_any_fields(self, layer, port, timestamp, epochs, sizes, version):
        """Any valid field values survive signing and verifying."""
        node = FakeNode("mix", layer=layer, port=port)
        descriptor = node.descriptor(
            timestamp, epochs=sorted(epochs), packet_sizes=tuple(sizes), software_version=version
        )
        self.assertEqual(verify_descriptor(sign_descriptor(descriptor, node.identity_key)), descriptor)

    @given(st.binary(max_size=300))
    def test_garbage_is_malformed(self, data):
        """Arbitrary bytes are refused with a typed error, never another exception."""
        with self.assertRaises((MalformedDocument, BadSignature)):
            verify_descriptor(data)

    def test_changed_field_breaks_signature(self):
        """Changing one signed field (the layer) leaves a signature that does not verify."""
        node = FakeNode("mix", layer=1)
        contents = _tamper(node.signed(1000), '"layer":1', '"layer":2')
        with self.assertRaises(BadSignature):
            verify_descriptor(contents)

    def test_another_nodes_identity_is_bad_signature(self):
        """A descriptor naming node A's identity but signed by node B is refused."""
        a, b = FakeNode(), FakeNode()
        descriptor = b.descriptor(1000, identity=a.identity)
        with self.assertRaises(ValueError):
            sign_descriptor(descriptor, b.identity_key)
        from nymprov.netdoc.descriptor import DESCRIPTOR_CONTEXT
        from nymprov.netdoc.signed import seal

        forged = seal(descriptor.to_json(), b.identity_key, DESCRIPTOR_CONTEXT)
        with self.assertRaises(BadSignature):
            verify_descriptor(forged)

    def test_malformed_names_field(self):
        """A bad field is refused with its name in the message."""
        node = FakeNode("mix")
        contents = _tamper(node.signed(1000), '"mix_address":"127.0.0.1', '"mix_address":"localhost')
        with self.assertRaises(MalformedDocument) as caught:
            verify_descriptor(contents)
        self.assertIn("mix_address", str(caught.exception))

    def test_descriptor_signature_is_no_document_signature(self):
        """A signature made for a descriptor does not verify as a document's."""
        key = SigningKey.generate()
        good = sign_document(_document(key, 0, []), key)
        envelope = json.loads(good)
        from nymprov.netdoc.descriptor import DESCRIPTOR_CONTEXT

        envelope["signature"] = key.sign(DESCRIPTOR_CONTEXT + b"\n" + envelope["signed"].encode()).signature.hex()
        with self.assertRaises(BadSignature):
            verify_document(json.dumps(envelope).encode(), key.verify_key.encode())


class DocumentTests(SynchronousTestCase):
    def setUp(self):
        self.key = SigningKey.generate()
        self.pinned = self.key.verify_key.encode()
        self.nodes = [FakeNode("mix", layer=1), FakeNode("mix", layer=2), FakeNode("provider")]

    def signed(self, epoch=0, generated=1000):
        nodes = [n.descriptor(900, epochs=(epoch, epoch + 1)) for n in self.nodes]
        return sign_document(_document(self.key, epoch, nodes, generated), self.key)

    def test_round_trip_and_topology(self):
        """A document verifies, and its topology carries each node's key of the epoch."""
        document = verify_document(self.signed(epoch=4), self.pinned, epoch=4)
        topology = document.topology()
        self.assertEqual(len(topology.layers), 2)
        for node in self.nodes:
            self.assertEqual(topology.by_identity(node.identity).sphinx_key, node.sphinx_key(4).public_bytes)
        self.assertEqual(
            document.topology(5).by_identity(self.nodes[0].identity).sphinx_key,
            self.nodes[0].sphinx_key(5).public_bytes,
        )

    def test_refusals(self):
        """Wrong signer, bad signature and wrong epoch are each a typed refusal."""
        other = SigningKey.generate()
        with self.assertRaises(WrongDirectory):
            verify_document(sign_document(_document(other, 0, []), other), self.pinned)
        with self.assertRaises(BadSignature):
            verify_document(_tamper(self.signed(), '"epoch":0', '"epoch":1'), self.pinned)
        with self.assertRaises(WrongEpoch):
            verify_document(self.signed(epoch=2), self.pinned, epoch=3)

    def test_holder_keeps_last_good(self):
        """A holder given a badly signed document refuses it, counts it, and keeps the last good one."""
        counters = Counters()
        holder = DocumentHolder(self.pinned, counters)
        seen = []
        holder.on_document(seen.append)
        good = holder.accept(self.signed(epoch=0))
        tampered = _tamper(self.signed(epoch=0, generated=2000), '"generated":2000', '"generated":3000')
        with self.assertRaises(BadSignature):
            holder.accept(tampered)
        self.assertIs(holder.latest, good)
        self.assertEqual(seen, [good])
        self.assertEqual(counters.get("directory.document_refused", "bad_signature"), 1)
        newer = holder.accept(self.signed(epoch=0, generated=2000))
        self.assertIs(holder.document_for(0), newer)
        # An older copy of the same epoch never replaces a newer one.
        holder.accept(self.signed(epoch=0, generated=1500))
        self.assertIs(holder.document_for(0), newer)


class EpochTests(SynchronousTestCase):
    def test_boundaries(self):
        """Epoch n runs from start + n*length, included, to the next, excluded."""
        epochs = Epochs(10.0, start=100.0)
        self.assertEqual(epochs.number_at(100.0), 0)
        self.assertEqual(epochs.number_at(109.999), 0)
        self.assertEqual(epochs.number_at(110.0), 1)
        self.assertEqual((epochs.start_of(3), epochs.end_of(3)), (130.0, 140.0))
        self.assertAlmostEqual(epochs.until_next(112.5), 7.5)
        with self.assertRaises(ValueError):
            Epochs(0)
