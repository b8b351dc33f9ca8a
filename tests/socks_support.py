"""
Helpers for the SOCKS5 tests: a test CA with a certificate for
``localhost``, an HTTPS server using it, and an exit policy file.
"""

import datetime
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import reactor, ssl
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.web.server import Site


def _name(common):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def make_test_ca(directory):
    """
    :returns: ``(ca_path, cert_pem, key_pem)``: the CA's certificate file
        (for ``curl --cacert``) and a server certificate for ``localhost``.
    """
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("nymprov test CA")).issuer_name(_name("nymprov test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(_name("localhost")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256()))
    ca_path = os.path.join(directory, "test-ca.pem")
    with open(ca_path, "wb") as f:
        f.write(ca.public_bytes(serialization.Encoding.PEM))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return ca_path, cert.public_bytes(serialization.Encoding.PEM), key_pem


async def listen_https(test, resource, cert_pem, key_pem):
    """Serve ``resource`` over TLS on loopback; returns the listening port."""
    certificate = ssl.PrivateCertificate.loadPEM(cert_pem + key_pem)
    site = Site(resource)
    site.noisy = False
    endpoint = SSL4ServerEndpoint(reactor, 0, certificate.options(), interface="127.0.0.1")
    listening = await endpoint.listen(site)
    test.addCleanup(listening.stopListening)
    return listening


def write_policy(directory, lines):
    """:returns: the path of an exit policy file holding ``lines``."""
    path = os.path.join(directory, "exit-policy")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path
