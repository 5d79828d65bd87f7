"""A pretrained language model registered for the enclave path (moto: S3, SageMaker): packed from a folder or an
S3 prefix, its model.tar.gz what the enclave's parent unpacks and checks, its package PendingManualApproval with its
kind, digest and client artifacts, and its approval publishing them without a preprocessing record."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from common import artifacts
from common.enclave_model import CAUSAL_LM, EnclaveModelRecord
from common.estimate import EstimateError, ModelCosts
from common.language_model import pack_folder
from common.model_package import enclave_model_digest, model_kind
from pipelines.approval import publish_client_artifacts
from pipelines.pretrained import PretrainedError, register_pretrained
from tests.language_models import tiny_bloom

BUCKET, GROUP, IMAGE = "models", "notes", "000000000000.dkr.ecr.us-east-1.amazonaws.com/fhe-inference:1"


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_bloom(tmp_path_factory.mktemp("bloom") / "model")


@pytest.fixture
def aws() -> Any:
    with mock_aws():
        s3, sagemaker = boto3.client("s3", region_name="us-east-1"), boto3.client("sagemaker", region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        sagemaker.create_model_package_group(ModelPackageGroupName=GROUP)
        yield s3, sagemaker


def _register(aws: Any, source: str) -> dict[str, Any]:
    s3, sagemaker = aws
    return register_pretrained(sagemaker, s3, source=source, package_group=GROUP, model_bucket=BUCKET, image_uri=IMAGE)


def test_a_folder_is_registered_pending_approval_with_its_digest_and_what_the_parent_unpacks(
    aws: Any, folder: Path, tmp_path: Path
) -> None:
    s3, sagemaker = aws
    registered = _register(aws, str(folder))
    package = sagemaker.describe_model_package(ModelPackageName=registered["model_package"])
    assert package["ModelApprovalStatus"] == "PendingManualApproval" and model_kind(package) == "enclave"
    packed = pack_folder(folder)
    assert (
        enclave_model_digest(package)
        == registered["model_digest"]
        == EnclaveModelRecord.of(CAUSAL_LM, packed, 0, "bloom").sha256
    )
    uri = package["InferenceSpecification"]["Containers"][0]["ModelDataUrl"].removeprefix(f"s3://{BUCKET}/")
    with tarfile.open(fileobj=io.BytesIO(s3.get_object(Bucket=BUCKET, Key=uri)["Body"].read())) as archive:
        archive.extractall(tmp_path / "model", filter="data")
    record, content = EnclaveModelRecord.load(tmp_path / "model")  # as the parent's ServedModel reads it
    assert (record.format, record.takes_text, content) == (CAUSAL_LM, True, packed)


def test_an_s3_prefix_is_registered_and_anything_but_model_files_under_it_refused(aws: Any, folder: Path) -> None:
    s3, _ = aws
    for path in folder.iterdir():
        s3.put_object(Bucket=BUCKET, Key=f"incoming/bloom/{path.name}", Body=path.read_bytes())
    registered = _register(aws, f"s3://{BUCKET}/incoming/bloom/")
    assert registered["model_digest"] == EnclaveModelRecord.of(CAUSAL_LM, pack_folder(folder), 0, "bloom").sha256
    s3.put_object(Bucket=BUCKET, Key="incoming/bloom/pytorch_model.bin", Body=b"\x80\x04pickle")
    with pytest.raises(PretrainedError, match=r"'pytorch_model\.bin'"):
        _register(aws, f"s3://{BUCKET}/incoming/bloom/")
    with pytest.raises(PretrainedError, match="neither a folder nor"):
        _register(aws, "/no/such/folder")


def test_its_approval_publishes_the_record_and_releases_without_a_preprocessing_record(aws: Any, folder: Path) -> None:
    s3, sagemaker = aws
    registered = _register(aws, str(folder))
    package = sagemaker.describe_model_package(ModelPackageName=registered["model_package"])
    target = publish_client_artifacts(s3, package)
    listed = s3.list_objects_v2(Bucket=target.bucket, Prefix=target.key)["Contents"]
    published = sorted(item["Key"].rsplit("/", 1)[-1] for item in listed)
    assert published == sorted([*artifacts.ENCLAVE_TEXT_CLIENT_ARTIFACTS, artifacts.COSTS_JSON])
    # The pace its registration measured: what owners' estimates of text bundles are made of.
    costs = json.loads(s3.get_object(Bucket=target.bucket, Key=target.join(artifacts.COSTS_JSON).key)["Body"].read())
    per_prompt = ModelCosts.for_prompts(costs, 33, 100.0).seconds_per_sample
    assert costs["enclave_seconds_per_prompt"] > 0 and per_prompt == pytest.approx(
        costs["enclave_seconds_per_prompt"] + 32 * costs["enclave_seconds_per_token"]
    )
    with pytest.raises(EstimateError, match="measured no pace"):
        ModelCosts.for_prompts({}, 33, 100.0)
