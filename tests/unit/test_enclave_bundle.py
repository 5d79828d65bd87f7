"""The enclave bundle: the owner's client writes it (a KMS data key under the owner's and bundle's context, records
under it, the owner's public key in the manifest), its manifest is validated as strictly as an FHE bundle's and
neither path reads the other's, and only the owner's key opens a result, only for its own bundle (moto for KMS; the
enclave's part done here with the key KMS releases, as the enclave does after attestation)."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric import x25519
from moto import mock_aws

from client.enclave_bundle import encrypt_enclave_bundle, open_enclave_result, owner_key, public_bytes
from client.errors import FheClientError
from common.bundle.binding import ShardBinding
from common.bundle.enclave_crypto import decrypt_records, records_from_bytes, records_to_bytes, seal_results
from common.bundle.enclave_manifest import bundle_path, parse_enclave_manifest, result_manifest, sealed_entries
from common.bundle.manifest import package_ref, parse_manifest
from common.bundle.schema import MANIFEST_NAME, BundleError, sha256_hex
from common.versions import VersionsRecord

PACKAGE = "arn:aws:sagemaker:us-east-1:123456789012:model-package/breast-cancer-enclave/3"
ROWS = np.arange(250 * 4, dtype=np.float64).reshape(250, 4) / 7


@pytest.fixture
def kms() -> Any:
    with mock_aws():
        client = boto3.client("kms", region_name="us-east-1")
        client.key_arn = client.create_key()["KeyMetadata"]["Arn"]
        yield client


def _bundle(kms: Any, folder: Path, owner: str = "alice", bundle_id: str = "b-0001", **given: Any) -> Any:
    return encrypt_enclave_bundle(
        kms,
        key_arn=kms.key_arn,
        owner=owner,
        model=package_ref(PACKAGE),
        versions=VersionsRecord.current().to_dict(),
        rows=given.pop("rows", ROWS),
        owner_public_key=given.pop("owner_public_key", public_bytes(owner_key(folder.parent / "home"))),
        destination=folder,
        bundle_id=bundle_id,
        shard_size=100,
        progress=False,
        **given,
    )


def _serve(kms: Any, folder: Path, owner: str) -> tuple[bytes, dict[int, bytes]]:
    """The enclave's part: each shard's records opened with the released key, its 'predictions' (the row sums)
    sealed to the manifest's owner key, bound to the owner the bundle lies under."""
    request_bytes = (folder / MANIFEST_NAME).read_bytes()
    request = parse_enclave_manifest(request_bytes)
    sealed = {}
    for shard in request.shards:
        binding = ShardBinding(owner, request.bundle_id, shard.index)
        data_key = kms.decrypt(CiphertextBlob=request.enclave.data_key, EncryptionContext=binding.encryption_context())[
            "Plaintext"
        ]
        records = records_from_bytes(
            decrypt_records(data_key, (folder / shard.key).read_bytes(), binding), "records", max_values=10**6
        )
        sealed[shard.index] = seal_results(
            request.enclave.owner_public_key, records_to_bytes(records.sum(axis=1)), binding
        )
    return result_manifest(request, sha256_hex(request_bytes), sealed_entries(request, sealed)).to_json(), sealed


def test_the_owner_writes_a_bundle_and_opens_its_result(kms: Any, tmp_path: Path) -> None:
    manifest = _bundle(kms, tmp_path / "bundle")
    written = json.loads((tmp_path / "bundle" / MANIFEST_NAME).read_bytes())
    assert bundle_path(written) == "enclave" and "evaluation_key" not in written
    assert [shard.samples for shard in manifest.shards] == [100, 100, 50]
    for shard in manifest.shards:  # no record in the clear in any object
        assert records_to_bytes(ROWS[:1]) not in (tmp_path / "bundle" / shard.key).read_bytes()
    result, sealed = _serve(kms, tmp_path / "bundle", "alice")
    predictions = open_enclave_result(
        owner_key(tmp_path / "home"), "alice", (tmp_path / "bundle" / MANIFEST_NAME).read_bytes(), result, sealed
    )
    assert np.array_equal(predictions, ROWS.sum(axis=1))


def test_the_owners_private_key_is_kept_owner_only_and_refused_when_readable_by_others(tmp_path: Path) -> None:
    key = owner_key(tmp_path)
    assert stat.S_IMODE((tmp_path / "owner_x25519.key").stat().st_mode) == 0o600
    assert public_bytes(owner_key(tmp_path)) == public_bytes(key)
    (tmp_path / "owner_x25519.key").chmod(0o644)
    with pytest.raises(FheClientError, match="readable by others"):
        owner_key(tmp_path)


def test_another_owner_cannot_use_the_data_key_or_open_the_result(kms: Any, tmp_path: Path) -> None:
    _bundle(kms, tmp_path / "bundle")
    with pytest.raises(kms.exceptions.InvalidCiphertextException):  # alice's key under bob's context
        _serve(kms, tmp_path / "bundle", "bob")
    result, sealed = _serve(kms, tmp_path / "bundle", "alice")
    request = (tmp_path / "bundle" / MANIFEST_NAME).read_bytes()
    with pytest.raises(FheClientError, match="another owner's key"):
        open_enclave_result(x25519.X25519PrivateKey.generate(), "alice", request, result, sealed)
    with pytest.raises(BundleError) as refused:  # alice's key, but the results bound to another owner
        open_enclave_result(owner_key(tmp_path / "home"), "bob", request, result, sealed)
    assert refused.value.code == "tampered"


def test_a_result_of_another_request_or_with_a_changed_shard_is_refused(kms: Any, tmp_path: Path) -> None:
    _bundle(kms, tmp_path / "one", bundle_id="b-0001")
    _bundle(kms, tmp_path / "two", bundle_id="b-0002")
    result, sealed = _serve(kms, tmp_path / "one", "alice")
    key = owner_key(tmp_path / "home")
    with pytest.raises(BundleError, match="not the result of bundle b-0002"):
        open_enclave_result(key, "alice", (tmp_path / "two" / MANIFEST_NAME).read_bytes(), result, sealed)
    changed = {**sealed, 1: sealed[1][:-1] + bytes([sealed[1][-1] ^ 1])}
    with pytest.raises(BundleError) as refused:
        open_enclave_result(key, "alice", (tmp_path / "one" / MANIFEST_NAME).read_bytes(), result, changed)
    assert refused.value.code == "checksum"


@pytest.mark.parametrize(
    ("change", "field", "code"),
    [
        (
            lambda m: m["enclave"].update(owner_public_key=base64.b64encode(b"x" * 31).decode()),
            "owner_public_key",
            "invalid",
        ),
        (lambda m: m["enclave"].update(data_key="not base64!"), "enclave.data_key", "invalid"),
        (lambda m: m["enclave"].update(data_key=""), "enclave.data_key", "invalid"),
        (lambda m: m["enclave"].update(key_arn="arn:aws:kms:us-east-1:1:key/x"), "enclave.key_arn", "invalid"),
        (lambda m: m["enclave"].update(extra=1), "enclave.extra", "invalid"),
        (
            lambda m: m.update(evaluation_key={"sha256": "0" * 64, "uri": "s3://b/k", "size": 1}),
            "evaluation_key",
            "wrong_path",
        ),
        (lambda m: m.pop("enclave"), "enclave", "missing_field"),
        (lambda m: m["shards"][0].update(key="../../other/records"), "shards[0].key", "escapes_prefix"),
    ],
)
def test_an_enclave_manifest_that_breaks_the_format_is_refused_by_name(
    kms: Any, tmp_path: Path, change: Any, field: str, code: str
) -> None:
    _bundle(kms, tmp_path / "bundle")
    manifest = json.loads((tmp_path / "bundle" / MANIFEST_NAME).read_bytes())
    change(manifest)
    with pytest.raises(BundleError) as refused:
        parse_enclave_manifest(json.dumps(manifest).encode())
    assert field in refused.value.field and refused.value.code == code


def test_the_fhe_path_refuses_an_enclave_bundle_by_name(kms: Any, tmp_path: Path) -> None:
    _bundle(kms, tmp_path / "bundle")
    with pytest.raises(BundleError) as refused:
        parse_manifest((tmp_path / "bundle" / MANIFEST_NAME).read_bytes())
    assert (refused.value.field, refused.value.code) == ("enclave", "wrong_path")


def test_the_owners_role_is_named_when_it_is_not_a_batch_owner(kms: Any, tmp_path: Path) -> None:
    with pytest.raises(BundleError) as refused:
        _bundle(kms, tmp_path / "bundle", owner="Not An Owner")
    assert refused.value.code == "invalid_owner"
