"""KMS's ``Recipient`` in the local AWS. Without ministack: the refusals of a ``Recipient`` and the CMS envelope
(opened here as an enclave opens it). On the running local AWS (IAM enforced): a key policy pinning an enclave
measurement releases a data key, as ``CiphertextForRecipient`` only, to a document of that image, and to nothing
else: another image, no ``Recipient``, another root, a replayed document, the owner's role."""

from __future__ import annotations

import base64
import datetime
import json
from pathlib import Path
from typing import Any

import pytest
from asn1crypto import cms
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives import padding as symmetric_padding
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.padding import MGF1, OAEP
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from local_aws_fixtures import ACCOUNT, LocalAws

from aws_emulators.local_aws import kms_recipient
from aws_emulators.local_aws.kms_recipient import RecipientRefused, envelope, verified_recipient
from aws_emulators.nitro.attestation import sign_document
from aws_emulators.nitro.authority import AttestationAuthority
from aws_emulators.nitro.measurement import image_sha384
from aws_emulators.nitro.nsm import Nsm, nsm_for_image


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _der(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _recipient(nsm: Nsm, key: rsa.RSAPrivateKey) -> dict[str, Any]:
    """A ``Recipient`` as boto3 takes it (the document as bytes; botocore encodes it)."""
    answer = nsm.answer({"Attestation": {"public_key": _der(key), "user_data": None, "nonce": None}})
    return {"AttestationDocument": answer["Attestation"]["document"], "KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256"}


def _wire(recipient: dict[str, Any]) -> dict[str, Any]:
    """The same ``Recipient`` as KMS receives it in the request's JSON."""
    document = recipient["AttestationDocument"]
    if isinstance(document, bytes):
        document = base64.b64encode(document).decode()
    return {**recipient, "AttestationDocument": document}


def _open(envelope_der: bytes, key: rsa.RSAPrivateKey) -> bytes:
    """The enclave's side of CiphertextForRecipient: the content key under RSA-OAEP-SHA256, the content AES-CBC."""
    enveloped = cms.ContentInfo.load(envelope_der)["content"]
    (recipient,) = enveloped["recipient_infos"]
    content_key = key.decrypt(
        recipient.chosen["encrypted_key"].native,
        OAEP(mgf=MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None),
    )
    content = enveloped["encrypted_content_info"]
    iv = content["content_encryption_algorithm"]["parameters"].native
    decryptor = Cipher(algorithms.AES(content_key), modes.CBC(iv)).decryptor()
    padded = decryptor.update(content["encrypted_content"].native) + decryptor.finalize()
    unpadder = symmetric_padding.PKCS7(128).unpadder()
    return unpadder.update(padded) + unpadder.finalize()


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "enclave.img"
    path.write_bytes(b"enclave application" * 64)
    return path


def test_the_envelope_opens_with_the_documents_private_key_only() -> None:
    key, other = _key(), _key()
    sealed = envelope(b"a 32-byte data key, for example!", key.public_key())
    assert cms.ContentInfo.load(sealed)["content_type"].native == "enveloped_data"
    assert _open(sealed, key) == b"a 32-byte data key, for example!"
    with pytest.raises(ValueError):
        _open(sealed, other)


def test_a_recipient_is_refused_without_a_trusted_root_with_another_algorithm_or_without_an_rsa_key(
    image: Path, attestation_authority: AttestationAuthority
) -> None:
    nsm, key = nsm_for_image(image, attestation_authority), _key()
    root = attestation_authority.root
    content, public_key = verified_recipient(_wire(_recipient(nsm, key)), root)
    assert content.pcrs[0].hex() == image_sha384(image)
    assert public_key.public_numbers() == key.public_key().public_numbers()
    refusals = {
        "no root": (_wire(_recipient(nsm, key)), None),
        "algorithm": (_wire({**_recipient(nsm, key), "KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_1"}), root),
        "not base64": ({**_wire(_recipient(nsm, key)), "AttestationDocument": "%%%"}, root),
        "no key": (
            {
                "AttestationDocument": base64.b64encode(
                    nsm.answer({"Attestation": {"public_key": None}})["Attestation"]["document"]
                ).decode(),
                "KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256",
            },
            root,
        ),
    }
    for name, (recipient, trusted) in refusals.items():
        with pytest.raises(RecipientRefused) as refused:
            verified_recipient(recipient, trusted)
        assert refused.value.code == "ValidationException", name


def test_a_document_older_than_the_window_is_refused(
    image: Path, attestation_authority: AttestationAuthority, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(kms_recipient.MAX_AGE_VARIABLE, "300")
    recipient = _wire(_recipient(nsm_for_image(image, attestation_authority), _key()))
    later = datetime.datetime.now(tz=datetime.UTC) + datetime.timedelta(minutes=6)
    with pytest.raises(RecipientRefused, match="old"):
        verified_recipient(recipient, attestation_authority.root, now=later)


# ---------------------------------------------------------------------------------------- on the running local AWS

ENCLAVE_ROLE, OWNER_ROLE = "enclave-instance", "batch-owner"


def _role(local_aws: LocalAws, name: str, actions: list[str]) -> dict[str, str]:
    iam, sts = local_aws.client("iam"), local_aws.client("sts")
    trust = {"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"}, "Action": "sts:AssumeRole"}
    arn = iam.create_role(
        RoleName=name, AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [trust]})
    )["Role"]["Arn"]
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}]}
    iam.put_role_policy(RoleName=name, PolicyName="kms", PolicyDocument=json.dumps(policy))
    credentials = sts.assume_role(RoleArn=arn, RoleSessionName=name)["Credentials"]
    return {
        "aws_access_key_id": credentials["AccessKeyId"],
        "aws_secret_access_key": credentials["SecretAccessKey"],
        "aws_session_token": credentials["SessionToken"],
    }


@pytest.fixture(scope="module")
def measured_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("enclave") / "enclave.img"
    path.write_bytes(b"the enclave that may decrypt" * 64)
    return path


@pytest.fixture(scope="module")
def enclave_key(local_aws: LocalAws, measured_image: Path) -> dict[str, Any]:
    """A key whose policy lets the owner make data keys and the enclave role decrypt only from the measured image."""
    enclave, owner = _role(local_aws, ENCLAVE_ROLE, ["kms:Decrypt"]), _role(local_aws, OWNER_ROLE, ["kms:*"])
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "Administration",
                "Effect": "Allow",
                "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"},
                "Action": ["kms:Describe*", "kms:Get*", "kms:Put*", "kms:Create*", "kms:List*"],
                "Resource": "*",
            },
            {
                "Sid": "OwnersMakeDataKeys",
                "Effect": "Allow",
                "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:role/{OWNER_ROLE}"},
                "Action": "kms:GenerateDataKey",
                "Resource": "*",
            },
            {
                "Sid": "OnlyTheMeasuredEnclaveDecrypts",
                "Effect": "Allow",
                "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:role/{ENCLAVE_ROLE}"},
                "Action": "kms:Decrypt",
                "Resource": "*",
                "Condition": {
                    "StringEqualsIgnoreCase": {"kms:RecipientAttestation:ImageSha384": image_sha384(measured_image)}
                },
            },
        ],
    }
    key_id = local_aws.client("kms").create_key(Policy=json.dumps(policy))["KeyMetadata"]["KeyId"]
    data_key = local_aws.client("kms", **owner).generate_data_key(KeyId=key_id, KeySpec="AES_256")
    return {"key_id": key_id, "enclave": enclave, "owner": owner, "data_key": data_key}


def _decrypt(local_aws: LocalAws, enclave_key: dict[str, Any], **recipient: Any) -> dict[str, Any]:
    kms = local_aws.client("kms", **enclave_key["enclave"])
    return dict(kms.decrypt(CiphertextBlob=enclave_key["data_key"]["CiphertextBlob"], **recipient))


@pytest.mark.integration
def test_the_measured_enclave_gets_the_data_key_sealed_to_its_key_and_never_in_plaintext(
    local_aws: LocalAws, enclave_key: dict[str, Any], measured_image: Path, attestation_authority: AttestationAuthority
) -> None:
    key = _key()
    answer = _decrypt(
        local_aws, enclave_key, Recipient=_recipient(nsm_for_image(measured_image, attestation_authority), key)
    )
    assert "Plaintext" not in answer
    assert _open(answer["CiphertextForRecipient"], key) == enclave_key["data_key"]["Plaintext"]


@pytest.mark.integration
def test_an_image_changed_by_one_byte_is_refused(
    local_aws: LocalAws, enclave_key: dict[str, Any], measured_image: Path, attestation_authority: AttestationAuthority
) -> None:
    changed = measured_image.with_name("changed.img")
    content = bytearray(measured_image.read_bytes())
    content[0] ^= 1
    changed.write_bytes(bytes(content))
    with pytest.raises(ClientError) as refused:
        _decrypt(local_aws, enclave_key, Recipient=_recipient(nsm_for_image(changed, attestation_authority), _key()))
    assert refused.value.response["Error"]["Code"] == "AccessDeniedException"


@pytest.mark.integration
def test_without_recipient_the_attestation_condition_never_applies(
    local_aws: LocalAws, enclave_key: dict[str, Any]
) -> None:
    """The public reference's mistake: Decrypt without Recipient. The enclave role is refused, not served."""
    with pytest.raises(ClientError) as refused:
        _decrypt(local_aws, enclave_key)
    assert refused.value.response["Error"]["Code"] == "AccessDeniedException"


@pytest.mark.integration
def test_a_document_of_another_root_or_a_replayed_one_is_refused(
    local_aws: LocalAws,
    enclave_key: dict[str, Any],
    measured_image: Path,
    attestation_authority: AttestationAuthority,
    tmp_path: Path,
) -> None:
    other_root = nsm_for_image(measured_image, AttestationAuthority.ensure(tmp_path / "other-root"))
    genuine = nsm_for_image(measured_image, attestation_authority)
    key = _key()
    replayed = genuine.content(
        at=datetime.datetime.now(tz=datetime.UTC) - datetime.timedelta(minutes=10), public_key=_der(key)
    )
    for recipient in (
        _recipient(other_root, key),
        {
            "AttestationDocument": sign_document(replayed, genuine.signer.key),
            "KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256",
        },
    ):
        with pytest.raises(ClientError) as refused:
            _decrypt(local_aws, enclave_key, Recipient=recipient)
        # A document that does not verify gives the policy no measurement to match: refused before the key is used.
        assert refused.value.response["Error"]["Code"] == "AccessDeniedException"


@pytest.mark.integration
def test_the_owners_role_may_make_data_keys_but_never_decrypt(
    local_aws: LocalAws, enclave_key: dict[str, Any], measured_image: Path, attestation_authority: AttestationAuthority
) -> None:
    kms = local_aws.client("kms", **enclave_key["owner"])
    recipient = _recipient(nsm_for_image(measured_image, attestation_authority), _key())
    for extra in ({}, {"Recipient": recipient}):
        with pytest.raises(ClientError) as refused:
            kms.decrypt(CiphertextBlob=enclave_key["data_key"]["CiphertextBlob"], **extra)
        assert refused.value.response["Error"]["Code"] == "AccessDeniedException"
