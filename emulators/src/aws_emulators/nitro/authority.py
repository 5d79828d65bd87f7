"""The local stack's attestation root: a P-384 certificate authority made on first use under a folder and kept, as
the stack's TLS authority is. It stands where AWS's Nitro Enclaves root stands: relying parties (the local KMS, the
auditor) pin its certificate, and it certifies each NSM's signing key.

On AWS the root's key never leaves AWS; here it is a file readable by its owner only (``root-key.pem``, mode 0600),
which the NSM emulator reads and an enclave process must not be given."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

ROOT_VALID = datetime.timedelta(days=30 * 365)  # AWS's root is valid for 30 years
SIGNER_VALID = datetime.timedelta(hours=3)  # AWS's NSM signing certificates live about three hours


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "local stack"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


@dataclass(frozen=True)
class NsmSigner:
    """An NSM's signing key and its certificate chain (``cabundle``: the root first)."""

    key: ec.EllipticCurvePrivateKey
    certificate: bytes
    cabundle: list[bytes]


class AttestationAuthority:
    """The root (``root.pem``, what relying parties trust) and its key, in ``folder``."""

    def __init__(self, folder: Path, root: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        self.folder = folder
        self.root = root
        self._key = key

    @property
    def root_path(self) -> Path:
        """The root certificate (PEM) relying parties pin."""
        return self.folder / "root.pem"

    @classmethod
    def ensure(cls, folder: Path) -> AttestationAuthority:
        """The authority kept in ``folder``, made there on first use."""
        certificate_path, key_path = folder / "root.pem", folder / "root-key.pem"
        if certificate_path.exists() and key_path.exists():
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise ValueError(f"{key_path} is not an EC key")
            return cls(folder, x509.load_pem_x509_certificate(certificate_path.read_bytes()), key)
        folder.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP384R1())
        now = datetime.datetime.now(tz=datetime.UTC)
        name = _name("local attestation root")
        root = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + ROOT_VALID)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA384())
        )
        key_path.touch(mode=0o600)
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        certificate_path.write_bytes(root.public_bytes(serialization.Encoding.PEM))
        return cls(folder, root, key)

    def issue_signer(self, module_id: str, *, now: datetime.datetime | None = None) -> NsmSigner:
        """A fresh signing key for one NSM, certified for ``SIGNER_VALID``."""
        now = now or datetime.datetime.now(tz=datetime.UTC)
        key = ec.generate_private_key(ec.SECP384R1())
        certificate = (
            x509.CertificateBuilder()
            .subject_name(_name(module_id))
            .issuer_name(self.root.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + SIGNER_VALID)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False)
            .sign(self._key, hashes.SHA384())
        )
        der = serialization.Encoding.DER
        return NsmSigner(key, certificate.public_bytes(der), [self.root.public_bytes(der)])
