"""The audit of enclave bundles: the relying party's verifier of attestation documents (documents made by the local
NSM emulator, signed under its test root), what the audit reads of each shard's document and of the enclave key's
policy (moto: S3, KMS), and the check that joins them with the registered model."""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

import boto3
import pytest
from aws_emulators.nitro.attestation import sign_document
from aws_emulators.nitro.authority import AttestationAuthority
from aws_emulators.nitro.nsm import Nsm
from moto import mock_aws

from audit import checks, collect
from common.attestation import (
    AWS_NITRO_ROOT_FINGERPRINT,
    ROOT_VARIABLE,
    AttestationInvalid,
    aws_nitro_root,
    trusted_root,
    verify_attestation,
)
from common.bundle.binding import ShardBinding
from common.bundle.enclave_manifest import attestation_key
from common.workflow import BundleRef

MEASUREMENT = bytes(range(48))
OTHER_MEASUREMENT = bytes(48)
MODEL_DIGEST = bytes.fromhex("ab" * 32)
OWNER, BUNDLE = "clinic-a", "b-20261206-0001"
PACKAGE = "arn:aws:sagemaker:us-east-1:000000000000:model-package/fhe-models/7"


@pytest.fixture
def authority(tmp_path: Path) -> AttestationAuthority:
    return AttestationAuthority.ensure(tmp_path / "attestation")


def _nsm(authority: AttestationAuthority, measurement: bytes = MEASUREMENT, **signer: Any) -> Nsm:
    return Nsm({0: measurement, 1: bytes(48), 2: bytes(48)}, authority.issue_signer("i-0test-enc0", **signer), "i-0")


def _document(nsm: Nsm, *, shard: int = 0, at: datetime.datetime | None = None) -> bytes:
    nonce = ShardBinding(OWNER, BUNDLE, shard).attestation_nonce()
    content = nsm.content(at=at, public_key=b"k" * 294, user_data=MODEL_DIGEST, nonce=nonce)
    return sign_document(content, nsm.signer.key)


# ---- the verifier ------------------------------------------------------------------------------------------------


def test_a_document_proves_the_measurement_model_and_shard_it_was_made_for(authority: AttestationAuthority) -> None:
    proof = verify_attestation(_document(_nsm(authority), shard=3), authority.root)
    assert proof.image_sha384 == MEASUREMENT.hex()
    assert proof.model_digest == MODEL_DIGEST.hex()
    assert proof.nonce == ShardBinding(OWNER, BUNDLE, 3).attestation_nonce()
    assert proof.nonce != ShardBinding(OWNER, BUNDLE, 2).attestation_nonce()
    assert proof.nonce != ShardBinding("clinic-b", BUNDLE, 3).attestation_nonce()


def test_the_chain_is_checked_at_the_documents_own_time(authority: AttestationAuthority) -> None:
    """The NSM's certificate lives hours and the audit runs days later: the chain is checked at the document's time,
    so a document dated outside its signing certificate's life is refused, whenever it is checked."""
    later = datetime.datetime.now(tz=datetime.UTC) + datetime.timedelta(hours=4)
    with pytest.raises(AttestationInvalid, match="was not valid at the document's time"):
        verify_attestation(_document(_nsm(authority), at=later), authority.root)


def test_a_document_of_another_root_is_refused(authority: AttestationAuthority, tmp_path: Path) -> None:
    other = AttestationAuthority.ensure(tmp_path / "other")
    with pytest.raises(AttestationInvalid, match="does not start at the trusted root"):
        verify_attestation(_document(_nsm(other)), authority.root)
    with pytest.raises(AttestationInvalid, match="does not start at the trusted root"):
        verify_attestation(_document(_nsm(authority)), aws_nitro_root())


def test_a_changed_document_is_refused(authority: AttestationAuthority) -> None:
    document = bytearray(_document(_nsm(authority)))
    at = bytes(document).index(MODEL_DIGEST)
    document[at] ^= 1  # another model digest, under the same signature
    with pytest.raises(AttestationInvalid, match="signature does not verify"):
        verify_attestation(bytes(document), authority.root)


@pytest.mark.parametrize("document", [b"", b"\x00" * 20, b"not cbor at all", b"\xa1\x01\x02", b"x" * 20_000])
def test_bytes_that_are_no_document_are_refused_with_a_reason(authority: AttestationAuthority, document: bytes) -> None:
    with pytest.raises(AttestationInvalid):
        verify_attestation(document, authority.root)


def test_the_pinned_aws_root_is_awss(monkeypatch: pytest.MonkeyPatch, authority: AttestationAuthority) -> None:
    root = aws_nitro_root()
    assert root.subject.rfc4514_string() == "CN=aws.nitro-enclaves,OU=AWS,O=Amazon,C=US"
    assert AWS_NITRO_ROOT_FINGERPRINT.startswith("641a0321")
    monkeypatch.delenv(ROOT_VARIABLE, raising=False)
    assert trusted_root() == root
    monkeypatch.setenv(ROOT_VARIABLE, str(authority.root_path))
    assert trusted_root() == authority.root
    with pytest.raises(AttestationInvalid, match="not a readable PEM"):
        trusted_root(authority.folder / "no-such.pem")


# ---- what the audit reads ----------------------------------------------------------------------------------------

BUCKET = "bundles"


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket=BUCKET)
        yield s3, boto3.client("kms")


def _sources(s3: Any, kms: Any, root: Any, key_arn: str = "") -> collect.Sources:
    return collect.Sources(
        sagemaker=None, stepfunctions=None, s3=s3, audit_table=None, state_machine_arn="", bundle_bucket=BUCKET,
        pipeline_name="", kms=kms, enclave_key_arn=key_arn, attestation_root=root,
    )  # fmt: skip


class _Result:
    """The shards of a delivered enclave bundle's result manifest, as shards_served reads them."""

    def __init__(self, count: int) -> None:
        self.shards = [type("Entry", (), {"index": index})() for index in range(count)]

    def binding(self, owner: str, shard: int) -> ShardBinding:
        return ShardBinding(owner, BUNDLE, shard)


def test_each_shard_is_shown_with_what_served_it_or_why_its_document_proves_nothing(
    aws: Any, authority: AttestationAuthority
) -> None:
    s3, kms = aws
    ref = BundleRef(BUCKET, BUNDLE, f"inbox/{OWNER}/{BUNDLE}/manifest.json", "etag")
    prefix = ref.layout.result_prefix(BUNDLE)
    nsm = _nsm(authority)
    documents = {0: _document(nsm, shard=0), 1: _document(nsm, shard=0), 2: b"forged"}  # shard 1 shows shard 0's
    for index, document in documents.items():
        uri = prefix.join(attestation_key(index))
        s3.put_object(Bucket=uri.bucket, Key=uri.key, Body=document)
    served = collect.shards_served(_sources(s3, kms, authority.root), ref, _Result(4))  # type: ignore[arg-type]
    assert served[0]["image_sha384"] == MEASUREMENT.hex() and served[0]["model_digest"] == MODEL_DIGEST.hex()
    assert served[0]["problem"] is None
    assert served[1]["problem"] == "its attestation document was made for another shard"
    assert "does not verify" in served[2]["problem"]
    assert served[3]["problem"] == "its attestation document is missing"


def test_the_key_policys_pinned_measurements_and_unattested_decrypts_are_read(aws: Any) -> None:
    s3, kms = aws
    PINNED = MEASUREMENT.hex().upper()  # noqa: N806 (as the template's parameter may write it)
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "Admin", "Effect": "Allow", "Principal": {"AWS": "*"}, "Action": ["kms:Get*"], "Resource": "*"},
            {
                "Sid": "OnlyTheMeasuredEnclaveDecrypts", "Effect": "Allow", "Principal": {"AWS": "*"},
                "Action": "kms:Decrypt", "Resource": "*",
                "Condition": {"StringEqualsIgnoreCase": {"kms:RecipientAttestation:ImageSha384": PINNED}},
            },
            {"Sid": "Careless", "Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "kms:*", "Resource": "*"},
        ],
    }  # fmt: skip
    key_arn = kms.create_key(Policy=json.dumps(policy))["KeyMetadata"]["Arn"]
    read = collect.enclave_key_policy(_sources(s3, kms, None, key_arn))
    assert read == {"key_arn": key_arn, "measurements": [MEASUREMENT.hex()], "unattested": ["Careless"]}
    assert collect.enclave_key_policy(_sources(s3, kms, None)) is None


# ---- the check ---------------------------------------------------------------------------------------------------


def _bundle(*served: dict[str, Any], outcome: str = "delivered") -> dict[str, Any]:
    return {"bundle": f"{OWNER}/{BUNDLE}", "path": "enclave", "outcome": outcome, "model_package_arn": PACKAGE,
            "served_by": list(served)}  # fmt: skip


def _shard(
    index: int, measurement: bytes = MEASUREMENT, digest: bytes = MODEL_DIGEST, problem: str | None = None
) -> dict[str, Any]:
    return {"shard": index, "image_sha384": measurement.hex(), "model_digest": digest.hex(), "problem": problem}


POLICY = {"key_arn": "arn:key", "measurements": [MEASUREMENT.hex()], "unattested": []}


def test_shards_served_by_the_pinned_enclave_and_the_registered_model_pass() -> None:
    check = checks.enclave_served_as_attested([_bundle(_shard(0), _shard(1))], POLICY, {PACKAGE: MODEL_DIGEST.hex()})
    assert check.ok, check.failures


def test_each_way_a_shard_was_not_served_as_attested_is_named() -> None:
    bundles = [
        _bundle(
            _shard(0, measurement=OTHER_MEASUREMENT),
            _shard(1, digest=b"\x01" * 32),
            _shard(2, problem="its attestation document is missing"),
        ),
        _bundle(),
        _bundle(_shard(0, measurement=OTHER_MEASUREMENT), outcome="quarantined"),  # not delivered: not checked
    ]
    policy = {**POLICY, "unattested": ["Careless"]}
    failures = checks.enclave_served_as_attested(bundles, policy, {PACKAGE: MODEL_DIGEST.hex()}).failures
    assert len(failures) == 5, failures
    assert f"shard 0: served by enclave measurement {OTHER_MEASUREMENT.hex()}" in failures[1]
    assert f"shard 1: the enclave served model digest {'01' * 32}" in failures[2]
    assert "shard 2: its attestation document is missing" in failures[3]
    assert "no shard has an attestation document" in failures[4]
    assert "statement Careless allows kms:Decrypt without pinning" in failures[0]
    unreadable = checks.enclave_served_as_attested([_bundle(_shard(0))], POLICY, {PACKAGE: None}).failures
    assert unreadable == [
        f"bundle {OWNER}/{BUNDLE}, shard 0: the registered digest of {PACKAGE}'s model cannot be read"
    ]
    no_key = checks.enclave_served_as_attested([_bundle(_shard(0))], None, {}).failures
    assert no_key == ["enclave bundles were delivered, but the deployment names no enclave key"]
