"""TLS for the local stack: a certificate authority of the stack's own and one server certificate for loopback,
which the local AWS and the local SageMaker both serve. Clients trust the authority through botocore's own
setting (``AWS_CA_BUNDLE``), as a corporate or private CA is trusted on AWS; verification is never turned off.

AWS serves only TLS, and the product's buckets refuse anything else (``aws:SecureTransport``): with TLS on, the
local AWS sets that condition as AWS does, so those policies hold here too."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALID_DAYS = 825  # the longest a server certificate may live for the platforms' trust stores


@dataclass(frozen=True)
class TlsMaterial:
    """Where the stack's authority (what clients trust) and its server certificate and key are."""

    folder: Path

    @property
    def authority(self) -> Path:
        return self.folder / "ca.pem"

    @property
    def certificate(self) -> Path:
        return self.folder / "server.pem"

    @property
    def key(self) -> Path:
        return self.folder / "server-key.pem"

    def exists(self) -> bool:
        return all(path.exists() for path in (self.authority, self.certificate, self.key))


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def ensure_tls(folder: Path) -> TlsMaterial:
    """The stack's TLS material in ``folder``, made on first use and kept (a restart keeps trusting it). The
    authority's key is not kept: nothing else is ever signed with it."""
    material = TlsMaterial(folder)
    if material.exists():
        return material
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(tz=datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("fhe local stack authority")
    authority = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )  # digital signature, certificate and CRL signing
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    material.key.touch(mode=0o600)
    material.key.write_bytes(_pem(server_key))
    material.certificate.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    material.authority.write_bytes(authority.public_bytes(serialization.Encoding.PEM))
    return material
