"""Tests for nymprov.net.tls: the self-signed certificate and server TLS options."""

import hashlib
import os
import stat

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.internet import protocol, reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import SSL4ClientEndpoint, SSL4ServerEndpoint
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.trial.unittest import SynchronousTestCase, TestCase

from nymprov.net import tls
from nymprov.errors import ConfigError


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


class CertificateFileTests(SynchronousTestCase):
    """Making, reusing and refusing the certificate files."""

    def setUp(self):
        self.data_dir = self.mktemp()

    def test_created_with_modes(self):
        """The key is 0600, the certificate readable, the dir 0700."""
        tls.load_or_create_certificate(self.data_dir)
        self.assertEqual(_mode(self.data_dir), 0o700)
        self.assertEqual(_mode(os.path.join(self.data_dir, tls.TLS_KEY_FILE)), 0o600)
        self.assertTrue(os.path.isfile(os.path.join(self.data_dir, tls.TLS_CERTIFICATE_FILE)))

    def test_certificate_contents(self):
        """The certificate is self-signed P-256, named nymprov, valid for years."""
        tls.load_or_create_certificate(self.data_dir)
        with open(os.path.join(self.data_dir, tls.TLS_CERTIFICATE_FILE), "rb") as f:
            certificate = x509.load_pem_x509_certificate(f.read())
        self.assertIsInstance(certificate.public_key(), ec.EllipticCurvePublicKey)
        self.assertEqual(certificate.public_key().curve.name, "secp256r1")
        self.assertEqual(certificate.subject, certificate.issuer)
        self.assertEqual(
            certificate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value,
            "nymprov",
        )
        names = certificate.extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        ).value.get_values_for_type(x509.DNSName)
        self.assertEqual(names, ["nymprov"])
        lifetime = certificate.not_valid_after_utc - certificate.not_valid_before_utc
        self.assertGreater(lifetime.days, 10 * 365)
        certificate.verify_directly_issued_by(certificate)

    def test_reused_and_fingerprint_stable(self):
        """A second call loads the same certificate; the fingerprint does not change."""
        first = tls.load_or_create_certificate(self.data_dir)
        second = tls.load_or_create_certificate(self.data_dir)
        third = tls.load_certificate(self.data_dir)
        fingerprint = tls.certificate_fingerprint(first)
        self.assertEqual(tls.certificate_fingerprint(second), fingerprint)
        self.assertEqual(tls.certificate_fingerprint(third), fingerprint)

    def test_fingerprint_is_sha256_of_der(self):
        """The fingerprint is the SHA-256 digest of the certificate's DER."""
        certificate = tls.load_or_create_certificate(self.data_dir)
        with open(os.path.join(self.data_dir, tls.TLS_CERTIFICATE_FILE), "rb") as f:
            der = x509.load_pem_x509_certificate(f.read()).public_bytes(
                serialization.Encoding.DER
            )
        fingerprint = tls.certificate_fingerprint(certificate)
        self.assertEqual(fingerprint, hashlib.sha256(der).digest())

    def test_distinct_providers(self):
        """Two data dirs get different certificates."""
        one = tls.load_or_create_certificate(self.data_dir)
        two = tls.load_or_create_certificate(self.mktemp())
        self.assertNotEqual(
            tls.certificate_fingerprint(one), tls.certificate_fingerprint(two)
        )

    def test_missing_certificate_remade_for_same_key(self):
        """A deleted certificate is made anew for the key that is kept."""
        first = tls.load_or_create_certificate(self.data_dir)
        os.unlink(os.path.join(self.data_dir, tls.TLS_CERTIFICATE_FILE))
        second = tls.load_or_create_certificate(self.data_dir)
        self.assertTrue(second.getPublicKey().matches(first.privateKey))

    def test_refuses_open_key(self):
        """A 0644 TLS key file is refused with ConfigError naming it."""
        tls.load_or_create_certificate(self.data_dir)
        key_path = os.path.join(self.data_dir, tls.TLS_KEY_FILE)
        os.chmod(key_path, 0o644)
        with self.assertRaises(ConfigError) as caught:
            tls.load_or_create_certificate(self.data_dir)
        self.assertIn(key_path, str(caught.exception))

    def test_refuses_malformed_certificate(self):
        """A certificate file that is not PEM is refused naming it."""
        tls.load_or_create_certificate(self.data_dir)
        path = os.path.join(self.data_dir, tls.TLS_CERTIFICATE_FILE)
        with open(path, "wb") as f:
            f.write(b"garbage")
        with self.assertRaises(ConfigError) as caught:
            tls.load_or_create_certificate(self.data_dir)
        self.assertIn(path, str(caught.exception))

    def test_refuses_malformed_key(self):
        """A key file that is not PEM is refused naming it."""
        tls.load_or_create_certificate(self.data_dir)
        path = os.path.join(self.data_dir, tls.TLS_KEY_FILE)
        with open(path, "wb") as f:
            f.write(b"garbage")
        with self.assertRaises(ConfigError) as caught:
            tls.load_certificate(self.data_dir)
        self.assertIn(path, str(caught.exception))

    def test_refuses_mismatched_pair(self):
        """A certificate from another data dir does not pass with this key."""
        tls.load_or_create_certificate(self.data_dir)
        other = self.mktemp()
        tls.load_or_create_certificate(other)
        os.replace(
            os.path.join(other, tls.TLS_CERTIFICATE_FILE),
            os.path.join(self.data_dir, tls.TLS_CERTIFICATE_FILE),
        )
        with self.assertRaises(ConfigError) as caught:
            tls.load_certificate(self.data_dir)
        self.assertIn("does not match", str(caught.exception))


class _Echo(protocol.Protocol):
    def dataReceived(self, data):
        self.transport.write(data)


class _OneReply(protocol.Protocol):
    def __init__(self):
        self.reply = Deferred()
        self.lost = Deferred()
        self.received = b""

    def connectionMade(self):
        self.transport.write(b"ping")

    def dataReceived(self, data):
        self.received += data
        if self.received == b"ping" and not self.reply.called:
            handle = self.transport.getHandle()
            self.reply.callback(handle.get_protocol_version_name())

    def connectionLost(self, reason):
        self.lost.callback(None)


class ServerOptionsTests(TestCase):
    """server_tls_options serves real TLS on loopback."""

    def test_handshake_with_pinned_certificate(self):
        """
        A client that trusts only the provider's certificate completes a
        TLS 1.2+ handshake and exchanges data.
        """
        private_certificate = tls.load_or_create_certificate(self.mktemp())
        server_factory = protocol.Factory.forProtocol(_Echo)
        server_lost = []

        class _TrackedEcho(_Echo):
            def connectionLost(self, reason):
                server_lost[0].callback(None)

        server_lost.append(Deferred())
        server_factory.protocol = _TrackedEcho
        endpoint = SSL4ServerEndpoint(
            reactor, 0, tls.server_tls_options(private_certificate), interface="127.0.0.1"
        )

        def listening(port):
            self.addCleanup(port.stopListening)
            trust = Certificate.loadPEM(private_certificate.dumpPEM())
            client_options = optionsForClientTLS("nymprov", trustRoot=trust)
            client = _OneReply()
            client_endpoint = SSL4ClientEndpoint(
                reactor, "127.0.0.1", port.getHost().port, client_options
            )
            connected = client_endpoint.connect(protocol.Factory.forProtocol(lambda: client))
            connected.addCallback(lambda _: client.reply)

            def check(version):
                self.assertIn(version, ("TLSv1.2", "TLSv1.3"))
                client.transport.loseConnection()
                return gatherResults([client.lost, server_lost[0]])

            return connected.addCallback(check)

        return endpoint.listen(server_factory).addCallback(listening)


class CipherSuiteTests(TestCase):
    """The provider offers only AEAD cipher suites."""

    async def test_only_aead_suites(self):
        """
        A TLS 1.2 client offering only CBC-SHA suites cannot connect; one
        offering AES-GCM can, and that is what it gets.
        """
        import socket
        import ssl

        from twisted.internet.threads import deferToThread

        private_certificate = tls.load_or_create_certificate(self.mktemp())
        endpoint = SSL4ServerEndpoint(
            reactor, 0, tls.server_tls_options(private_certificate), interface="127.0.0.1"
        )
        port = await endpoint.listen(protocol.Factory.forProtocol(_Echo))
        self.addCleanup(port.stopListening)
        address = ("127.0.0.1", port.getHost().port)

        def handshake(ciphers):
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            context.maximum_version = ssl.TLSVersion.TLSv1_2
            context.set_ciphers(ciphers)
            with socket.create_connection(address, timeout=10) as raw:
                try:
                    with context.wrap_socket(raw) as wrapped:
                        return wrapped.cipher()[0]
                except ssl.SSLError:
                    return None

        weak = "ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA:AES128-SHA:ECDHE-ECDSA-AES256-SHA384"
        self.assertIsNone(await deferToThread(handshake, weak))
        self.assertIn("GCM", await deferToThread(handshake, "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256"))
