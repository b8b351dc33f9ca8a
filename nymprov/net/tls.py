"""
TLS for the client API: the provider's self-signed certificate, made on first
run and reused, and the client's pinning of it.
"""

import datetime
import hashlib
import hmac
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.ssl import (
    AcceptableCiphers,
    Certificate,
    CertificateOptions,
    PrivateCertificate,
    TLSVersion,
)
from twisted.internet.ssl import KeyPair as TLSKeyPair
from twisted.python.failure import Failure
from zope.interface import implementer

from nymprov.errors import ConfigError
from nymprov.keys import (
    ensure_private_dir,
    read_private_file,
    write_file_atomically,
)

TLS_KEY_FILE = "tls.key"
TLS_CERTIFICATE_FILE = "tls.crt"

# Clients know the provider by its identity key and may pin this
# certificate's fingerprint; the name is only a label, so one fixed name
# serves every provider whatever its address.
CERTIFICATE_NAME = "nymprov"

# Twenty years: the certificate is pinned, not checked against a CA, so
# expiry would only break clients without adding any safety.
CERTIFICATE_LIFETIME = datetime.timedelta(days=20 * 365)

# Room for a PEM private key or certificate, with plenty to spare.
_MAX_PEM_SIZE = 64 * 1024


def _make_key_pem():
    # ECDSA P-256: served by every OpenSSL that pyOpenSSL binds, and by
    # every TLS client library a Nym client might be written with.
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _make_certificate_pem(key_pem, now=None):
    key = serialization.load_pem_private_key(key_pem, password=None)
    if now is None:
        now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CERTIFICATE_NAME)])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        # A day of slack for clients whose clocks run behind.
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + CERTIFICATE_LIFETIME)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(CERTIFICATE_NAME)]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM)


def _read_certificate_file(path):
    try:
        with open(path, "rb") as f:
            return f.read(_MAX_PEM_SIZE)
    except OSError as e:
        raise ConfigError(f"{path}: cannot open: {e.strerror}")


def load_certificate(data_dir):
    """
    Load the TLS key and certificate from ``data_dir``.

    :rtype: twisted.internet.ssl.PrivateCertificate
    :raises ConfigError: naming the file if either is missing or malformed,
        the key file is open to group or others, or they do not match.
    """
    key_path = os.path.join(data_dir, TLS_KEY_FILE)
    certificate_path = os.path.join(data_dir, TLS_CERTIFICATE_FILE)
    key_pem = read_private_file(key_path, max_size=_MAX_PEM_SIZE)
    certificate_pem = _read_certificate_file(certificate_path)
    try:
        certificate = Certificate.loadPEM(certificate_pem)
    except crypto.Error:
        raise ConfigError(f"{certificate_path}: malformed certificate")
    try:
        key = TLSKeyPair.load(key_pem, crypto.FILETYPE_PEM)
    except crypto.Error:
        raise ConfigError(f"{key_path}: malformed private key")
    if not certificate.getPublicKey().matches(key):
        raise ConfigError(f"{certificate_path}: does not match the key in {key_path}")
    return PrivateCertificate.fromCertificateAndKeyPair(certificate, key)


def load_or_create_certificate(data_dir):
    """
    Load the TLS key and certificate from ``data_dir``, first making a
    self-signed certificate (and a key, mode 0600) if either is missing.

    An existing key is kept: a missing certificate is made anew for it.

    :rtype: twisted.internet.ssl.PrivateCertificate
    :raises ConfigError: as :func:`load_certificate`.
    """
    ensure_private_dir(data_dir)
    key_path = os.path.join(data_dir, TLS_KEY_FILE)
    certificate_path = os.path.join(data_dir, TLS_CERTIFICATE_FILE)
    if not os.path.lexists(key_path):
        write_file_atomically(key_path, _make_key_pem())
        if os.path.lexists(certificate_path):
            # A certificate for a key that no longer exists is useless.
            os.unlink(certificate_path)
    if not os.path.lexists(certificate_path):
        key_pem = read_private_file(key_path, max_size=_MAX_PEM_SIZE)
        try:
            certificate_pem = _make_certificate_pem(key_pem)
        except (ValueError, TypeError):
            raise ConfigError(f"{key_path}: malformed private key")
        write_file_atomically(certificate_path, certificate_pem, mode=0o644)
    return load_certificate(data_dir)


def certificate_fingerprint(certificate):
    """
    The SHA-256 digest of ``certificate`` in DER form: what a client pins
    (shown as 64 hex digits in configs, topology files and ``init``).

    :param certificate: a :class:`twisted.internet.ssl.Certificate` (a
        ``PrivateCertificate`` is one).
    :rtype: bytes
    """
    return hashlib.sha256(certificate.dump(crypto.FILETYPE_ASN1)).digest()


#: TLS 1.2 suites with forward secrecy and authenticated encryption only
#: (every TLS 1.3 suite is both); no CBC, no SHA-1 MACs, no static RSA.
_AEAD_ONLY = AcceptableCiphers.fromOpenSSLCipherString(
    "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!eNULL"
)


def server_tls_options(private_certificate):
    """
    The TLS context factory for serving with ``private_certificate``: what
    :class:`twisted.protocols.tls.TLSMemoryBIOFactory` and ``wrapServer``
    style endpoints take. TLS 1.2 is the oldest version offered.

    :param twisted.internet.ssl.PrivateCertificate private_certificate:
    :rtype: twisted.internet.ssl.CertificateOptions
    """
    return CertificateOptions(
        # pyOpenSSL wants cryptography's objects now; its own are deprecated.
        privateKey=private_certificate.privateKey.original.to_cryptography_key(),
        certificate=private_certificate.original.to_cryptography(),
        raiseMinimumTo=TLSVersion.TLSv1_2,
        acceptableCiphers=_AEAD_ONLY,
    )


class CertificatePinMismatch(Exception):
    """The provider's certificate is not the pinned one."""


@implementer(IOpenSSLClientConnectionCreator)
class _PinnedClientTLS:
    """
    TLS client connections that accept exactly one server certificate.

    The pin replaces CA validation: providers use self-signed certificates
    whose fingerprint is published with their identity.  The check runs in
    OpenSSL's verify callback, so a wrong certificate fails the handshake
    before any request is sent, and again when the handshake completes, in
    case a chain ever skips the leaf callback.
    """

    def __init__(self, fingerprint):
        if not isinstance(fingerprint, bytes) or len(fingerprint) != 32:
            raise ValueError("fingerprint must be a 32-byte SHA-256 digest")
        self._fingerprint = fingerprint
        context = SSL.Context(SSL.TLS_METHOD)
        context.set_min_proto_version(SSL.TLS1_2_VERSION)
        context.set_verify(SSL.VERIFY_PEER, self._verify)
        context.set_info_callback(self._info)
        self._context = context

    def _matches(self, certificate):
        if certificate is None:
            return False
        return hmac.compare_digest(certificate_fingerprint(Certificate(certificate)), self._fingerprint)

    def _verify(self, connection, certificate, errno, depth, ok):
        # Chain errors (self-signed, unknown issuer) are expected and
        # irrelevant: only the leaf's fingerprint decides.
        return depth != 0 or self._matches(certificate)

    def _info(self, connection, where, ret):
        if where & SSL.SSL_CB_HANDSHAKE_DONE:
            if not self._matches(connection.get_peer_certificate()):
                tls_protocol = connection.get_app_data()
                tls_protocol.failVerification(
                    Failure(CertificatePinMismatch("server certificate is not the pinned one"))
                )

    def clientConnectionForTLS(self, tlsProtocol):
        """IOpenSSLClientConnectionCreator API"""
        connection = SSL.Connection(self._context, None)
        connection.set_app_data(tlsProtocol)
        return connection


def pinned_tls_options(fingerprint):
    """
    Client TLS that trusts only the certificate with SHA-256 ``fingerprint``.

    Use with ``wrapClientTLS(pinned_tls_options(fp), TCP4ClientEndpoint(...))``.

    :param bytes fingerprint: ``certificate_fingerprint`` of the provider's
        certificate.
    :returns: an ``IOpenSSLClientConnectionCreator``.
    """
    return _PinnedClientTLS(fingerprint)
