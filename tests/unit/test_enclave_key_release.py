"""The enclave's side of a data key's release: its NSM client over the emulator's socket, the CMS envelope KMS
answers (made here by the local KMS's own code) opened with the enclave's key only, and a KMS that ignores
``Recipient`` (moto, as ministack did) refused rather than trusted."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from asn1crypto import cms
from aws_emulators.local_aws.kms_recipient import envelope
from aws_emulators.nitro.attestation import verify_document
from aws_emulators.nitro.authority import AttestationAuthority
from aws_emulators.nitro.nsm import NsmServer, nsm_for_image
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from moto import mock_aws

from containers.enclave.key_release import KeyRelease, KeyReleaseRefused, open_envelope
from containers.enclave.nsm import Nsm, NsmError, SocketTransport

DATA_KEY = bytes(range(32))


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def authority(tmp_path: Path) -> AttestationAuthority:
    return AttestationAuthority.ensure(tmp_path / "attestation")


@pytest.fixture
def nsm_socket(tmp_path: Path, authority: AttestationAuthority) -> Iterator[Path]:
    image = tmp_path / "enclave.img"
    image.write_bytes(b"enclave" * 100)
    path = tmp_path / "nsm.sock"
    server = NsmServer(path, nsm_for_image(image, authority))
    server.start()
    yield path
    server.shutdown()
    server.server_close()


def test_the_nsm_client_gets_a_document_carrying_its_key_and_the_models_digest(
    nsm_socket: Path, authority: AttestationAuthority
) -> None:
    public_key = (
        _key().public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    document = Nsm(SocketTransport(nsm_socket)).attestation(public_key=public_key, user_data=b"model digest")
    content = verify_document(document, authority.root, public_key=public_key)
    assert content.user_data == b"model digest"


def test_the_nsm_clients_refusals_are_named(nsm_socket: Path, tmp_path: Path) -> None:
    with pytest.raises(NsmError, match="InputTooLarge"):
        Nsm(SocketTransport(nsm_socket)).attestation(public_key=b"k", user_data=b"u" * 600)
    with pytest.raises(NsmError, match="could not be reached"):
        Nsm(SocketTransport(tmp_path / "no-such.sock")).attestation(public_key=b"k")


def test_the_envelope_opens_with_the_enclaves_key_and_with_no_other() -> None:
    key = _key()
    sealed = envelope(DATA_KEY, key.public_key())
    assert open_envelope(sealed, key) == DATA_KEY
    with pytest.raises(KeyReleaseRefused, match="does not open"):
        open_envelope(sealed, _key())


def test_an_envelope_that_is_not_what_kms_writes_is_refused_with_its_reason() -> None:
    key = _key()
    sealed = envelope(DATA_KEY, key.public_key())
    info = cms.ContentInfo.load(sealed)
    info["content"]["encrypted_content_info"]["content_encryption_algorithm"] = {
        "algorithm": "aes128_cbc",
        "parameters": bytes(16),
    }
    for damaged, reason in (
        (b"", "1 to"),
        (b"\x30\x03\x02\x01\x00", "not a CMS structure"),
        (info.dump(force=True), "AES-256-CBC"),
        (sealed[:-5], "not a CMS structure"),
    ):
        with pytest.raises(KeyReleaseRefused, match=reason):
            open_envelope(damaged, key)


@mock_aws
def test_a_kms_that_ignores_recipient_is_refused_not_trusted(nsm_socket: Path) -> None:
    """moto answers ``Plaintext`` whatever ``Recipient`` says, as ministack did: no key policy condition applied,
    so the enclave does not use the key."""
    kms = boto3.client("kms", region_name="us-east-1")
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    blob = kms.generate_data_key(KeyId=key_id, KeySpec="AES_256", EncryptionContext={"bundle": "b1"})
    release = KeyRelease(kms, Nsm(SocketTransport(nsm_socket)))
    with pytest.raises(KeyReleaseRefused, match="ignored Recipient"):
        release.data_key(blob["CiphertextBlob"], encryption_context={"bundle": "b1"}, model_digest=b"d" * 32)
