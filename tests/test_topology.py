"""Tests for nymprov.topology: the topology file and its loader."""

import json
import os

import base58
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from nymprov.provider.config import RunOptions
from nymprov.errors import ConfigError
from nymprov.interfaces import ITopology
from nymprov.sphinx import Node, encode_address
from nymprov.topology import (
    MixNode,
    ProviderNode,
    StaticTopology,
    Topology,
    TopologyError,
    dump_topology,
    load_topology,
    provider_topology,
)


def key(n):
    """A distinct 32-byte key for small ``n``."""
    return bytes([n]) * 32


def b58(raw):
    """``raw`` in base58 text."""
    return base58.b58encode(raw).decode("ascii")


def sample_document():
    """A valid document: two layers of one mix each and one provider."""
    return {
        "version": 1,
        "mixnodes": [
            {"identity": b58(key(1)), "sphinx_key": b58(key(2)),
             "mix_address": "127.0.0.1:1790", "layer": 1},
            {"identity": b58(key(3)), "sphinx_key": b58(key(4)),
             "mix_address": "[::1]:1791", "layer": 2},
        ],
        "providers": [
            {"identity": b58(key(5)), "sphinx_key": b58(key(6)),
             "mix_address": "127.0.0.1:1789", "client_address": "localhost:9000",
             "client_tls": True, "certificate_fingerprint": "ab" * 32},
        ],
    }


def encoded(document):
    """``document`` as the bytes of a file."""
    return json.dumps(document).encode("utf-8")


class LoadTests(SynchronousTestCase):
    """A well-formed file becomes a Topology with every lookup."""

    def setUp(self):
        self.topology = load_topology(encoded(sample_document()))

    def test_provides_interface(self):
        """The loaded topology provides ITopology."""
        self.assertTrue(verifyObject(ITopology, self.topology))

    def test_layers_and_providers(self):
        """Mix nodes are grouped by layer; providers keep every field."""
        layers = self.topology.layers
        self.assertEqual(sorted(layers), [1, 2])
        [first] = layers[1]
        self.assertEqual(first, MixNode(key(1), key(2), "127.0.0.1", 1790, 1))
        self.assertEqual(layers[2][0].host, "::1")
        [provider] = self.topology.providers
        self.assertEqual(provider.client_address, "localhost:9000")
        self.assertEqual(provider.certificate_fingerprint, b"\xab" * 32)
        self.assertTrue(provider.client_tls)

    def test_addresses(self):
        """Node addresses are Nym's 32-byte encoding of the mix link."""
        [first] = self.topology.layers[1]
        self.assertEqual(first.address, encode_address("127.0.0.1", 1790))
        self.assertEqual(self.topology.layers[2][0].mix_address, "[::1]:1791")
        self.assertEqual(first.route_node, Node(first.address, key(2)))

    def test_is_first_layer_and_known(self):
        """Only layer 1 is first layer; every mix and provider is known."""
        layer1 = encode_address("127.0.0.1", 1790)
        layer2 = encode_address("::1", 1791)
        provider = encode_address("127.0.0.1", 1789)
        stranger = encode_address("127.0.0.1", 1)
        self.assertTrue(self.topology.is_first_layer(layer1))
        self.assertFalse(self.topology.is_first_layer(layer2))
        self.assertFalse(self.topology.is_first_layer(provider))
        for address in (layer1, layer2, provider):
            self.assertTrue(self.topology.is_known_node(address))
        self.assertFalse(self.topology.is_known_node(stranger))

    def test_lookups(self):
        """Nodes are found by identity (bytes or base58) and by address."""
        provider = self.topology.providers[0]
        self.assertIs(self.topology.by_identity(key(5)), provider)
        self.assertIs(self.topology.by_identity(b58(key(5))), provider)
        self.assertIs(self.topology.provider(b58(key(5))), provider)
        self.assertIs(self.topology.by_address(provider.address), provider)
        self.assertRaises(KeyError, self.topology.provider, key(1))
        self.assertRaises(KeyError, self.topology.by_identity, "0OIl")
        self.assertRaises(KeyError, self.topology.by_address, b"\0" * 32)

    def test_nodes_are_frozen(self):
        """A node is immutable."""
        node = self.topology.layers[1][0]
        with self.assertRaises(Exception):
            node.port = 1

    def test_from_path(self):
        """A path is read like the bytes it holds."""
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(encoded(sample_document()))
        self.assertEqual(load_topology(path).nodes, self.topology.nodes)

    def test_optional_fields(self):
        """client_tls defaults to true, the fingerprint to None."""
        document = sample_document()
        del document["providers"][0]["client_tls"]
        del document["providers"][0]["certificate_fingerprint"]
        [provider] = load_topology(encoded(document)).providers
        self.assertTrue(provider.client_tls)
        self.assertIsNone(provider.certificate_fingerprint)


class MalformedTests(SynchronousTestCase):
    """A malformed file is a TopologyError that names the field."""

    def assert_refused(self, document, field, words):
        """Loading ``document`` fails naming ``field`` and saying ``words``."""
        contents = document if isinstance(document, bytes) else encoded(document)
        with self.assertRaises(TopologyError) as caught:
            load_topology(contents)
        self.assertIsInstance(caught.exception, ConfigError)
        self.assertEqual(caught.exception.field, field)
        message = str(caught.exception)
        self.assertTrue(message.startswith(f"{field}: ") or not field, message)
        self.assertIn(words, message)

    def test_bad_sphinx_key(self):
        """A key of the wrong length names mixnodes[i].sphinx_key."""
        document = sample_document()
        document["mixnodes"][1]["sphinx_key"] = b58(b"\1" * 31)
        self.assert_refused(document, "mixnodes[1].sphinx_key", "not base58 of 32 bytes")

    def test_not_base58(self):
        """A key with characters outside base58 is refused."""
        document = sample_document()
        document["providers"][0]["identity"] = "0OIl" * 11
        self.assert_refused(document, "providers[0].identity", "not base58")

    def test_missing_field(self):
        """A missing field is named."""
        document = sample_document()
        del document["mixnodes"][0]["layer"]
        self.assert_refused(document, "mixnodes[0].layer", "missing")

    def test_host_name_in_mix_address(self):
        """A mix link must be an IP literal: Sphinx headers carry octets."""
        document = sample_document()
        document["mixnodes"][0]["mix_address"] = "localhost:1790"
        self.assert_refused(document, "mixnodes[0].mix_address", "not an IP address")

    def test_bad_port(self):
        """Port 0 and ports above 65535 are refused."""
        for port in ("0", "65536", "x"):
            document = sample_document()
            document["providers"][0]["client_address"] = f"localhost:{port}"
            self.assert_refused(document, "providers[0].client_address", "not a port")

    def test_layer_gap(self):
        """Layers must be numbered 1..n."""
        document = sample_document()
        document["mixnodes"][1]["layer"] = 3
        self.assert_refused(document, "mixnodes", "without gaps")

    def test_layer_not_a_number(self):
        """A layer that is a boolean or out of range is refused."""
        for layer in (True, 0, 5, "1"):
            document = sample_document()
            document["mixnodes"][0]["layer"] = layer
            self.assert_refused(document, "mixnodes[0].layer", "whole number")

    def test_duplicate_address(self):
        """Two nodes on one mix link are refused."""
        document = sample_document()
        document["providers"][0]["mix_address"] = "127.0.0.1:1790"
        self.assert_refused(document, "providers[0].mix_address", "twice")

    def test_duplicate_identity(self):
        """Two nodes with one identity are refused."""
        document = sample_document()
        document["mixnodes"][1]["identity"] = b58(key(1))
        self.assert_refused(document, "mixnodes[1].identity", "twice")

    def test_bad_fingerprint(self):
        """A fingerprint must be 64 hex digits."""
        document = sample_document()
        document["providers"][0]["certificate_fingerprint"] = "zz" * 32
        self.assert_refused(document, "providers[0].certificate_fingerprint", "hex")

    def test_wrong_version(self):
        """Only version 1 is understood."""
        document = sample_document()
        document["version"] = 2
        self.assert_refused(document, "version", "expected 1")

    def test_not_json(self):
        """Bytes that are not JSON are refused as a whole."""
        self.assert_refused(b"{nope", "", "not JSON")
        self.assert_refused(b"[1]", "", "JSON object")

    def test_missing_file(self):
        """A file that cannot be read names its path."""
        path = self.mktemp()
        with self.assertRaises(TopologyError) as caught:
            load_topology(path)
        self.assertIn(path, str(caught.exception))

    def test_path_is_named(self):
        """An error in a file names the field and the file."""
        path = self.mktemp()
        document = sample_document()
        document["mixnodes"][0]["sphinx_key"] = "x"
        with open(path, "wb") as f:
            f.write(encoded(document))
        with self.assertRaises(TopologyError) as caught:
            load_topology(path)
        message = str(caught.exception)
        self.assertTrue(message.startswith("mixnodes[0].sphinx_key: "), message)
        self.assertIn(path, message)


def topologies():
    """Valid topologies: 0-4 layers of 1-3 mixes, 0-3 providers, unique keys."""

    def build(shape):
        layer_sizes, provider_count, tls_flags = shape
        counter = iter(range(1, 256))
        mixnodes = []
        for layer, size in enumerate(layer_sizes, start=1):
            for _ in range(size):
                n = next(counter)
                mixnodes.append(MixNode(key(n), bytes([n ^ 0x80]) * 32, "127.0.0.1", 1000 + n, layer))
        providers = []
        for i in range(provider_count):
            n = next(counter)
            fingerprint = bytes([n]) * 32 if tls_flags[i % len(tls_flags)] else None
            providers.append(
                ProviderNode(key(n), key(255 - n), "::1", 1000 + n, "localhost", 2000 + n,
                             tls_flags[i % len(tls_flags)], fingerprint)
            )
        return Topology(mixnodes, providers)

    return st.tuples(
        st.lists(st.integers(1, 3), max_size=4),
        st.integers(0, 3),
        st.lists(st.booleans(), min_size=1, max_size=3),
    ).map(build)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)


class PropertyTests(SynchronousTestCase):
    """Round trips, and garbage gives TopologyError and nothing else."""

    @settings(max_examples=60)
    @given(topologies())
    def test_round_trip(self, topology):
        """dump then load gives back the same nodes."""
        again = load_topology(dump_topology(topology))
        self.assertEqual(again.nodes, topology.nodes)
        self.assertEqual(again.layers, topology.layers)

    @settings(max_examples=150)
    @given(st.binary(max_size=200))
    def test_garbage_bytes(self, contents):
        """Arbitrary bytes load or raise TopologyError, nothing else."""
        try:
            load_topology(contents)
        except TopologyError:
            pass

    @settings(max_examples=150)
    @given(st.sampled_from(["mixnodes", "providers"]), st.data())
    def test_mutated_field(self, section, data):
        """Replacing any one field with any JSON value loads or names that entry."""
        document = sample_document()
        entry = data.draw(st.sampled_from(document[section]))
        index = document[section].index(entry)
        name = data.draw(st.sampled_from(sorted(entry)))
        entry[name] = data.draw(json_values)
        try:
            load_topology(encoded(document))
        except TopologyError as e:
            self.assertTrue(e.field.startswith(section), e.field)
            if e.field != section:
                self.assertEqual(e.field, f"{section}[{index}].{name}")

    @settings(max_examples=100)
    @given(json_values)
    def test_any_json_document(self, document):
        """Any JSON document loads or raises TopologyError."""
        try:
            load_topology(encoded(document))
        except TopologyError:
            pass


class DumpTests(SynchronousTestCase):
    """dump_topology writes a file others can read."""

    def test_writes_file(self):
        """With a path, the file holds the returned bytes and is world-readable."""
        topology = load_topology(encoded(sample_document()))
        path = self.mktemp()
        os.makedirs(os.path.dirname(path), exist_ok=True)
        contents = dump_topology(topology, path)
        with open(path, "rb") as f:
            self.assertEqual(f.read(), contents)
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o644)
        self.assertEqual(json.loads(contents), sample_document())


class StaticTopologyTests(SynchronousTestCase):
    """The fixed topology from the provider's --first-layer still works."""

    def test_static(self):
        """First-layer addresses are first layer and known; others only known."""
        first, other = encode_address("127.0.0.1", 1), encode_address("127.0.0.1", 2)
        topology = StaticTopology([first], [other])
        self.assertTrue(verifyObject(ITopology, topology))
        self.assertTrue(topology.is_first_layer(first))
        self.assertFalse(topology.is_first_layer(other))
        self.assertTrue(topology.is_known_node(other))
        self.assertFalse(topology.is_known_node(encode_address("127.0.0.1", 3)))


class ProviderTopologyTests(SynchronousTestCase):
    """A provider's topology: --first-layer plus the topology file."""

    def write(self, document):
        """Write ``document`` to a new file; return its path."""
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(encoded(document))
        return path

    def test_file_adds_first_layer_and_nodes(self):
        """The file's layer 1 becomes first layer; all its nodes become known."""
        given = encode_address("10.0.0.1", 1)
        topology = provider_topology([given], self.write(sample_document()))
        self.assertTrue(verifyObject(ITopology, topology))
        self.assertTrue(topology.is_first_layer(given))
        self.assertTrue(topology.is_first_layer(encode_address("127.0.0.1", 1790)))
        self.assertFalse(topology.is_first_layer(encode_address("::1", 1791)))
        self.assertTrue(topology.is_known_node(encode_address("127.0.0.1", 1789)))

    def test_without_file(self):
        """Without a file only the given first layer is known."""
        given = encode_address("10.0.0.1", 1)
        topology = provider_topology([given])
        self.assertTrue(topology.is_first_layer(given))
        self.assertFalse(topology.is_known_node(encode_address("127.0.0.1", 1789)))

    def test_provider_option(self):
        """--topology is checked while parsing: a bad file is a usage error naming the field."""
        options = RunOptions()
        good = self.write(sample_document())
        options.parseOptions(["--topology", good])
        self.assertEqual(options.provider_config.topology, os.path.abspath(good))
        document = sample_document()
        document["mixnodes"][0]["layer"] = 0
        with self.assertRaises(UsageError) as caught:
            RunOptions().parseOptions(["--topology", self.write(document)])
        message = str(caught.exception)
        self.assertTrue(message.startswith("--topology: mixnodes[0].layer: "), message)

    def test_provider_service_uses_file(self):
        """A provider built with --topology relays to the file's first layer."""
        from twisted.internet.testing import MemoryReactorClock

        from nymprov.provider.config import ProviderConfig
        from nymprov.provider.service import ProviderService

        config = ProviderConfig(data_dir=self.mktemp(), topology=self.write(sample_document()))
        service = ProviderService(config, MemoryReactorClock())
        self.assertTrue(service.topology.is_first_layer(encode_address("127.0.0.1", 1790)))
        self.assertFalse(service.topology.is_first_layer(encode_address("::1", 1791)))
