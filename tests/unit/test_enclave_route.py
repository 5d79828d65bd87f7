"""The workflow's route for enclave bundles, on moto (S3, KMS, SageMaker's registry): Validate plans an enclave
bundle for the enclave path only when its model is registered as an enclave model and its data key is the
deployment's; each path refuses the other's bundles by name; Assemble writes the sealed result's manifest."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from client.enclave_bundle import encrypt_enclave_bundle, owner_key, public_bytes
from common import artifacts, aws
from common.bundle.binding import ShardBinding
from common.bundle.enclave_crypto import records_to_bytes, seal_results
from common.bundle.enclave_manifest import parse_enclave_manifest, sealed_results_key
from common.bundle.manifest import package_ref
from common.bundle.messages import ShardResult
from common.bundle.schema import MANIFEST_NAME, sha256_hex
from common.bundle.store import write_shard_result
from common.versions import VersionsRecord
from common.workflow import BundleRef
from lambdas import assemble, validate
from lambdas.runtime import BundleRejected
from tests.unit.conftest import UNIT_BUCKET, UNIT_OWNER

ROWS = np.arange(120 * 4, dtype=np.float64).reshape(120, 4)


@pytest.fixture
def registry(s3: Any, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Two approved packages, one per kind, and the deployment's enclave key."""
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    for module in (validate, assemble):
        monkeypatch.setattr(module, "client", aws.client)
    monkeypatch.setattr(assemble, "publish", lambda detail_type, detail: None)
    sagemaker, kms = aws.client("sagemaker"), aws.client("kms")
    sagemaker.create_model_package_group(ModelPackageGroupName="g")
    arns = {}
    for kind in ("enclave", "fhe"):
        arns[kind] = sagemaker.create_model_package(
            ModelPackageGroupName="g",
            InferenceSpecification={
                "Containers": [{"Image": "serving:latest", "ModelDataUrl": "s3://models/model.tar.gz"}],
                "SupportedContentTypes": ["application/json"],
                "SupportedResponseMIMETypes": ["application/json"],
            },
            ModelApprovalStatus="Approved",
            CustomerMetadataProperties={artifacts.MODEL_KIND_PROPERTY: kind},
        )["ModelPackageArn"]
    return {"arns": arns, "key_arn": kms.create_key()["KeyMetadata"]["Arn"], "kms": kms, "s3": s3}


def _drop(registry: dict[str, Any], tmp_path: Path, kind: str = "enclave", bundle_id: str = "b-0001") -> BundleRef:
    folder = tmp_path / bundle_id
    manifest = encrypt_enclave_bundle(
        registry["kms"],
        key_arn=registry["key_arn"],
        owner=UNIT_OWNER,
        model=package_ref(registry["arns"][kind]),
        versions=VersionsRecord.current().to_dict(),
        rows=ROWS,
        owner_public_key=public_bytes(owner_key(tmp_path / "home")),
        destination=folder,
        bundle_id=bundle_id,
        shard_size=50,
        progress=False,
    )
    prefix = f"inbox/{UNIT_OWNER}/{bundle_id}"
    for shard in manifest.shards:
        registry["s3"].put_object(
            Bucket=UNIT_BUCKET, Key=f"{prefix}/{shard.key}", Body=(folder / shard.key).read_bytes()
        )
    key = f"{prefix}/{MANIFEST_NAME}"
    etag = registry["s3"].put_object(Bucket=UNIT_BUCKET, Key=key, Body=(folder / MANIFEST_NAME).read_bytes())["ETag"]
    return BundleRef(UNIT_BUCKET, bundle_id, key, etag)


def _refusal(bundle: BundleRef, enclave_key_arn: str) -> tuple[str, str | None]:
    with pytest.raises(BundleRejected) as refused:
        validate.validate(bundle, "fhe-e", enclave_key_arn)
    return refused.value.reason.code, refused.value.reason.field


def test_an_enclave_bundle_is_planned_for_the_enclave_path(registry: dict[str, Any], tmp_path: Path) -> None:
    bundle = _drop(registry, tmp_path)
    plan = validate.validate(bundle, "fhe-e", registry["key_arn"])
    assert (plan["path"], plan["shards"], plan["samples"], plan["endpoint"]) == ("enclave", 3, 120, None)
    assert plan["model_package_arn"] == registry["arns"]["enclave"]
    items = registry["s3"].get_object(**plan["shard_plan"])["Body"].read()
    assert json.loads(items) == [{"shard_index": 0}, {"shard_index": 1}, {"shard_index": 2}]


def test_an_enclave_bundle_is_refused_by_name_where_it_cannot_be_served(
    registry: dict[str, Any], tmp_path: Path
) -> None:
    assert _refusal(_drop(registry, tmp_path, "fhe"), registry["key_arn"]) == ("wrong_path", "model.package_arn")
    bundle = _drop(registry, tmp_path, bundle_id="b-0002")
    assert _refusal(bundle, "") == ("path_not_deployed", "enclave")
    other_key = registry["kms"].create_key()["KeyMetadata"]["Arn"]
    assert _refusal(bundle, other_key) == ("foreign_key", "enclave.key_arn")
    registry["s3"].delete_object(Bucket=UNIT_BUCKET, Key=f"inbox/{UNIT_OWNER}/b-0002/shards/00001.records")
    assert _refusal(bundle, registry["key_arn"]) == ("missing_object", "shards[1]")


def test_an_fhe_bundle_for_an_enclave_model_is_refused_as_the_wrong_path(
    registry: dict[str, Any], tmp_path: Path
) -> None:
    bundle = _drop(registry, tmp_path)
    manifest = json.loads(registry["s3"].get_object(Bucket=UNIT_BUCKET, Key=bundle.manifest_key)["Body"].read())
    del manifest["enclave"]
    manifest["evaluation_key"] = {
        "sha256": "a" * 64,
        "uri": f"s3://{UNIT_BUCKET}/inbox/{UNIT_OWNER}/keys/{'a' * 64}.ekey",
        "size": 10,
    }
    registry["s3"].put_object(Bucket=UNIT_BUCKET, Key=bundle.manifest_key, Body=json.dumps(manifest).encode())
    assert _refusal(bundle, registry["key_arn"]) == ("wrong_path", "model.package_arn")


def test_assemble_writes_the_sealed_results_manifest(registry: dict[str, Any], tmp_path: Path) -> None:
    bundle = _drop(registry, tmp_path)
    plan = validate.validate(bundle, "fhe-e", registry["key_arn"])
    request_bytes = registry["s3"].get_object(Bucket=UNIT_BUCKET, Key=bundle.manifest_key)["Body"].read()
    request = parse_enclave_manifest(request_bytes)
    for shard in request.shards:  # what the parent writes for each shard it served
        binding = ShardBinding(UNIT_OWNER, bundle.bundle_id, shard.index)
        sealed = seal_results(request.enclave.owner_public_key, records_to_bytes(np.zeros(shard.samples)), binding)
        uri = bundle.layout.result_prefix(bundle.bundle_id).join(sealed_results_key(shard.index))
        registry["s3"].put_object(Bucket=uri.bucket, Key=uri.key, Body=sealed)
        record = ShardResult(bundle.bundle_id, shard.index, str(uri), shard.samples, sha256_hex(sealed), len(sealed))
        write_shard_result(registry["s3"], bundle.layout, record)
    answer = assemble.assemble(bundle, plan, "execution-1")
    assert (answer["samples"], answer["shards"]) == (120, 3)
    written = registry["s3"].get_object(Bucket=UNIT_BUCKET, Key=bundle.layout.result_manifest(bundle.bundle_id).key)
    result = parse_enclave_manifest(written["Body"].read())
    assert result.kind == "result" and result.header.request_manifest_sha256 == sha256_hex(request_bytes)
    assert [shard.key for shard in result.shards] == [sealed_results_key(i) for i in range(3)]
    assert result.enclave.owner_public_key == request.enclave.owner_public_key
