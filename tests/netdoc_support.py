"""Nodes and descriptors for the directory tests: real keys, real signatures."""

import itertools

from nacl.signing import SigningKey

from nymprov.netdoc import Descriptor, EpochKey, sign_descriptor
from nymprov.sphinx import KeyPair

_ports = itertools.count(20000)


class FakeNode:
    """
    A node's keys and addresses, enough to make signed descriptors.

    :param str role: ``"mix"`` or ``"provider"``.
    """

    def __init__(self, role="mix", layer=1, port=None):
        self.identity_key = SigningKey.generate()
        self.identity = self.identity_key.verify_key.encode()
        self.role = role
        self.layer = layer if role == "mix" else None
        self.port = next(_ports) if port is None else port
        self.sphinx = {}

    def sphinx_key(self, epoch):
        if epoch not in self.sphinx:
            self.sphinx[epoch] = KeyPair.generate()
        return self.sphinx[epoch]

    def descriptor(self, timestamp, epochs=(0, 1), **changes):
        values = dict(
            identity=self.identity,
            role=self.role,
            layer=self.layer,
            mix_host="127.0.0.1",
            mix_port=self.port,
            timestamp=int(timestamp),
            sphinx_keys=tuple(EpochKey(e, self.sphinx_key(e).public_bytes) for e in epochs),
            software_version="test",
        )
        if self.role == "provider":
            values.update(client_host="127.0.0.1", client_port=self.port + 1000,
                          client_tls=True, certificate_fingerprint=bytes(range(32)))
        values.update(changes)
        return Descriptor(**values)

    def signed(self, timestamp, epochs=(0, 1), **changes):
        return sign_descriptor(self.descriptor(timestamp, epochs, **changes), self.identity_key)
