"""The local stack's TLS: a certificate authority of its own and a server certificate for loopback it signs (the
local SageMaker's serving of HTTPS only is tested with it, in emulators/tests)."""

from __future__ import annotations

from pathlib import Path

from cryptography import x509

from local.tls import ensure_tls


def test_the_server_certificate_is_for_loopback_signed_by_the_stacks_authority(tmp_path: Path) -> None:
    material = ensure_tls(tmp_path / "tls")
    authority = x509.load_pem_x509_certificate(material.authority.read_bytes())
    certificate = x509.load_pem_x509_certificate(material.certificate.read_bytes())
    certificate.verify_directly_issued_by(authority)
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert authority.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert material.key.stat().st_mode & 0o077 == 0, "the key is the owner's alone"
    before = material.certificate.read_bytes()
    assert ensure_tls(tmp_path / "tls").certificate.read_bytes() == before, "kept across restarts"
