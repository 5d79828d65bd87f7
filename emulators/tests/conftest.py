"""Fixtures of the emulators' tests: a certificate authority of their own and a certificate for 127.0.0.1 it signed
(the emulators serve HTTPS to clients that trust that authority and nothing else); for the local SageMaker's tests,
no AWS reachable and the server on a fresh state folder whose every response must fit botocore's model of its
operation (``sagemaker/sagemaker_fixtures.py``). One file: conftest modules outside packages share one name."""

from __future__ import annotations

import datetime
import ipaddress
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _authority_and_certificate(folder: Path) -> tuple[Path, Path, Path]:
    """A certificate authority, and a certificate for 127.0.0.1 it signed with its key: (authority, cert, key)."""
    now = datetime.datetime.now(datetime.UTC)
    authority_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    authority_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test authority")])
    authority = (
        x509.CertificateBuilder()
        .subject_name(authority_name)
        .issuer_name(authority_name)
        .public_key(authority_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(authority_key, hashes.SHA256())
    )
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(authority_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(authority_key, hashes.SHA256())
    )
    paths = folder / "authority.pem", folder / "certificate.pem", folder / "key.pem"
    paths[0].write_bytes(authority.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return paths


@pytest.fixture(scope="session")
def test_authority(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(authority, certificate, key) as PEM files, made once per test session."""
    return _authority_and_certificate(tmp_path_factory.mktemp("authority"))


SAGEMAKER_TESTS = Path(__file__).with_name("sagemaker")
LOCAL_AWS_TESTS = Path(__file__).with_name("local_aws")
# Their helper modules, imported by name as pytest imports its test files.
sys.path[:0] = [str(SAGEMAKER_TESTS), str(LOCAL_AWS_TESTS)]
from local_aws_fixtures import LocalAws, running_local_aws  # noqa: E402
from sagemaker_fixtures import NO_AWS, REGION, Served, serve  # noqa: E402

from aws_emulators.nitro.authority import AttestationAuthority  # noqa: E402


@pytest.fixture(scope="session")
def attestation_authority(tmp_path_factory: pytest.TempPathFactory) -> AttestationAuthority:
    """An attestation root of the tests' own, made as the local stack makes its own."""
    return AttestationAuthority.ensure(tmp_path_factory.mktemp("attestation"))


@pytest.fixture(scope="session")
def local_aws(
    tmp_path_factory: pytest.TempPathFactory,
    test_authority: tuple[Path, Path, Path],
    attestation_authority: AttestationAuthority,
) -> Iterator[LocalAws]:
    """The local AWS and the local SageMaker, shared by the local AWS's test modules; stopped after the session."""
    root = attestation_authority.root_path
    with running_local_aws(tmp_path_factory.mktemp("local-aws"), test_authority, root) as running:
        yield running


@pytest.fixture(autouse=True)
def no_aws(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test of the local SageMaker reaches a real AWS or a local stack: every AWS endpoint is a closed loopback
    port. (The local AWS's tests start one of their own and name it.)"""
    if SAGEMAKER_TESTS not in request.path.parents:
        return
    for name in [n for n in os.environ if n.startswith("AWS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ENDPOINT_URL", NO_AWS)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    """The local SageMaker on a fresh state folder; after the test, every response it gave must have fit."""
    running = serve(tmp_path / "state")
    try:
        yield running
    finally:
        running.stop()
    assert running.responses.errors() == [], "responses that do not fit the service model"
