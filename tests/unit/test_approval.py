"""Approval through the model registry: decisions with their notes on the local SageMaker (served in-process),
announced for the audit log, and the client artifacts published to batch owners and withdrawn."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest
from aws_emulators.sagemaker.server import LocalSageMaker, make_handler
from botocore.exceptions import ClientError


@pytest.fixture
def sagemaker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    service = LocalSageMaker(tmp_path)
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(service))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    for key, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}.items():
        monkeypatch.setenv(key, value)
    client = boto3.client(
        "sagemaker", region_name="us-east-1", endpoint_url=f"http://127.0.0.1:{server.server_address[1]}"
    )
    yield client
    server.shutdown()
    service.endpoints.shutdown()
    service.store.close()


@pytest.fixture
def decisions(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The approval events on the default bus (moto for STS, EventBridge and SQS; SageMaker passes through)."""
    from moto import mock_aws

    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws(config={"core": {"passthrough": {"services": ["sagemaker"]}}}):
        sqs, events = boto3.client("sqs", region_name="us-east-1"), boto3.client("events", region_name="us-east-1")
        url = sqs.create_queue(QueueName="decisions")["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        events.put_rule(Name="decisions", EventPattern=json.dumps({"source": ["fhe.model-registry"]}))
        events.put_targets(Rule="decisions", Targets=[{"Id": "q", "Arn": arn}])

        def received() -> list[dict[str, Any]]:
            messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
            return [json.loads(m["Body"]) for m in messages]

        yield received


def test_approve_and_reject_with_a_note(sagemaker: Any, decisions: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines.approval import ApprovalError, PublicationError, approve

    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL_SAGEMAKER", sagemaker.meta.endpoint_url)
    with pytest.raises(ClientError):
        approve(None, "nothing-here", "Approved", "")
    sagemaker.create_model_package_group(ModelPackageGroupName="g1")
    spec = {"Containers": [{"Image": "fhe-inference:latest", "ModelDataUrl": "s3://bucket-1/model.tar.gz"}]}
    for _ in range(2):
        sagemaker.create_model_package(ModelPackageGroupName="g1", InferenceSpecification=spec)
    # Package 2's run wrote no client artifacts: approved all the same, and the approval says what is missing.
    with pytest.raises(PublicationError, match="not published") as unpublished:
        approve(None, "g1", "Approved", "metrics reviewed")
    newest = unpublished.value.decided
    assert newest["arn"].endswith("/g1/2") and newest["status"] == "Approved"
    rejected = approve(newest["arn"].replace("/2", "/1"), "g1", "Rejected", "gap too large")
    assert rejected == {
        "arn": newest["arn"].replace("/2", "/1"),
        "status": "Rejected",
        "note": "gap too large",
        "client_artifacts": None,
    }
    with pytest.raises(ApprovalError, match="no package pending"):
        approve(None, "g1", "Approved", "")
    with pytest.raises(ApprovalError, match="decision"):
        approve(None, "g1", "Maybe", "")
    history = sagemaker.describe_model_package(ModelPackageName=rejected["arn"])["ApprovalDescription"]
    assert history == "gap too large"
    # Each decision was announced for the audit log, naming no decider: who decided is the registry's to say.
    events = decisions()
    announced = [
        (e["detail-type"], e["detail"]["ModelApprovalStatus"], e["detail"]["ApprovalDescription"]) for e in events
    ]
    assert announced == [
        ("Model Package Approval", "Approved", "metrics reviewed"),
        ("Model Package Approval", "Rejected", "gap too large"),
    ]
    assert not [e for e in events if "decided_by" in e["detail"]]


def test_an_approval_publishes_the_client_artifacts_and_a_rejection_withdraws_them(
    sagemaker: Any, decisions: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Batch owners read client artifacts only under published/<group>/<version>/ (infrastructure/owner.yaml):
    nothing is there before the approval, the approval copies the run's files (costs.json with them), a rejection
    deletes them, and the client fetches the published copy."""
    from client.errors import FheClientError
    from client.model import fetch_model
    from common.artifacts import COSTS_JSON, PUBLISHED_ARTIFACTS, VERSIONS_JSON
    from common.versions import VersionsRecord
    from pipelines.approval import approve

    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL_SAGEMAKER", sagemaker.meta.endpoint_url)
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="models-1")
    sagemaker.create_model_package_group(ModelPackageGroupName="g1")
    spec = {"Containers": [{"Image": "fhe-inference:latest", "ModelDataUrl": "s3://models-1/model.tar.gz"}]}
    run = "pipelines/p/exec-1/client"
    files = {name: f"{name} of exec-1".encode() for name in PUBLISHED_ARTIFACTS}
    files[VERSIONS_JSON] = json.dumps(VersionsRecord.current().to_dict()).encode()
    for name, body in files.items():
        s3.put_object(Bucket="models-1", Key=f"{run}/{name}", Body=body)
    arn = sagemaker.create_model_package(
        ModelPackageGroupName="g1",
        InferenceSpecification=spec,
        CustomerMetadataProperties={"client_artifacts": f"s3://models-1/{run}"},
    )["ModelPackageArn"]

    def published() -> dict[str, bytes]:
        listed = s3.list_objects_v2(Bucket="models-1", Prefix="published/").get("Contents", [])
        return {o["Key"]: s3.get_object(Bucket="models-1", Key=o["Key"])["Body"].read() for o in listed}

    assert published() == {}
    assert approve(arn, "g1", "Approved", "metrics reviewed")["client_artifacts"] == "s3://models-1/published/g1/1"
    assert published() == {f"published/g1/1/{name}": body for name, body in files.items()}
    # The client reads the published copy, not the run's: the run's files changed after the approval are not seen.
    s3.put_object(Bucket="models-1", Key=f"{run}/{COSTS_JSON}", Body=b"changed after the approval")
    model = fetch_model(sagemaker, s3, group="g1", home=tmp_path / "home")
    assert {p.name: p.read_bytes() for p in model.folder.iterdir() if p.name in files} == files
    assert json.loads((model.folder / "package.json").read_text())["client_artifacts"] == "s3://models-1/published/g1/1"
    approve(arn, "g1", "Rejected", "a defect found")
    assert published() == {}
    # Withdrawn: were the package Approved again elsewhere without publishing, the client would say so, by name.
    sagemaker.update_model_package(ModelPackageArn=arn, ModelApprovalStatus="Approved")
    with pytest.raises(FheClientError, match=r"not published .*fhe-pipeline approve --package-arn"):
        fetch_model(sagemaker, s3, group="g1", home=tmp_path / "another-home")
    kinds = [(e["detail-type"], e["detail"]["ModelApprovalStatus"]) for e in decisions()]
    assert kinds == [("Model Package Approval", "Approved"), ("Model Package Approval", "Rejected")]
