"""The local SageMaker's API through boto3, served in-process (no S3 needed for these operations)."""

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


ROLE = "arn:aws:iam::000000000000:role/fhe-pipeline"
DEFINITION = {
    "Version": "2020-12-01",
    "Parameters": [{"Name": "Message", "Type": "String", "DefaultValue": "no"}],
    "Steps": [
        {
            "Name": "Stop",
            "Type": "Fail",
            "Arguments": {
                "ErrorMessage": {"Std:Join": {"On": " ", "Values": ["because", {"Get": "Parameters.Message"}]}}
            },
        }
    ],
}


def test_unknown_operation_has_sagemakers_error_shape(sagemaker: Any) -> None:
    with pytest.raises(ClientError) as raised:
        sagemaker.list_domains()
    assert raised.value.response["Error"]["Code"] == "UnknownOperationException"


def test_pipeline_lifecycle_and_fail_step(sagemaker: Any) -> None:
    sagemaker.create_pipeline(PipelineName="p", PipelineDefinition=json.dumps(DEFINITION), RoleArn=ROLE)
    with pytest.raises(ClientError, match="already exists"):
        sagemaker.create_pipeline(PipelineName="p", PipelineDefinition=json.dumps(DEFINITION), RoleArn=ROLE)
    with pytest.raises(ClientError, match="not valid JSON"):
        sagemaker.update_pipeline(PipelineName="p", PipelineDefinition="{", RoleArn=ROLE)
    arn = sagemaker.start_pipeline_execution(
        PipelineName="p", PipelineParameters=[{"Name": "Message", "Value": "it must"}]
    )["PipelineExecutionArn"]
    waiter_deadline = 50
    for _ in range(waiter_deadline):
        status = sagemaker.describe_pipeline_execution(PipelineExecutionArn=arn)
        if status["PipelineExecutionStatus"] != "Executing":
            break
        threading.Event().wait(0.1)
    assert status["PipelineExecutionStatus"] == "Failed"
    assert status["FailureReason"] == "because it must"
    step = sagemaker.list_pipeline_execution_steps(PipelineExecutionArn=arn)["PipelineExecutionSteps"][0]
    assert step["StepName"] == "Stop" and step["FailureReason"] == "because it must"
    params = sagemaker.list_pipeline_parameters_for_execution(PipelineExecutionArn=arn)["PipelineParameters"]
    assert params == [{"Name": "Message", "Value": "it must"}]
    with pytest.raises(ClientError) as raised:
        sagemaker.describe_pipeline(PipelineName="missing")
    assert raised.value.response["Error"]["Code"] == "ResourceNotFound"


def test_model_registry_versions_and_approval(sagemaker: Any) -> None:
    sagemaker.create_model_package_group(ModelPackageGroupName="g")
    spec = {
        "Containers": [{"Image": "fhe-inference:latest", "ModelDataUrl": "s3://b/m.tar.gz"}],
        "SupportedContentTypes": ["application/json"],
        "SupportedResponseMIMETypes": ["application/json"],
    }
    first = sagemaker.create_model_package(ModelPackageGroupName="g", InferenceSpecification=spec)["ModelPackageArn"]
    second = sagemaker.create_model_package(ModelPackageGroupName="g", InferenceSpecification=spec)["ModelPackageArn"]
    assert first.endswith("/g/1") and second.endswith("/g/2")
    sagemaker.update_model_package(
        ModelPackageArn=second, ModelApprovalStatus="Approved", ApprovalDescription="checked by ops"
    )
    approved = sagemaker.list_model_packages(
        ModelPackageGroupName="g", ModelApprovalStatus="Approved", SortBy="CreationTime", SortOrder="Descending"
    )["ModelPackageSummaryList"]
    assert [p["ModelPackageArn"] for p in approved] == [second]
    described = sagemaker.describe_model_package(ModelPackageName=second)
    assert described["ModelApprovalStatus"] == "Approved"
    with pytest.raises(ClientError, match="ModelApprovalStatus must be one of"):
        sagemaker.update_model_package(ModelPackageArn=first, ModelApprovalStatus="Maybe")
    with pytest.raises(ClientError, match="does not exist"):
        sagemaker.create_model_package(ModelPackageGroupName="nope", InferenceSpecification=spec)


def test_endpoint_api_validates_before_hosting(sagemaker: Any) -> None:
    with pytest.raises(ClientError, match="Could not find model"):
        sagemaker.create_endpoint_config(
            EndpointConfigName="c1",
            ProductionVariants=[{"VariantName": "v", "ModelName": "missing", "InstanceType": "ml.m5.large"}],
        )
    with pytest.raises(ClientError, match="PrimaryContainer"):
        sagemaker.create_model(ModelName="m1", ExecutionRoleArn=ROLE)
    # SageMaker serves a model only under its own role: without one the model is refused, not run with whatever
    # credentials the server has.
    container = {"Image": "fhe-inference:latest", "ModelDataUrl": "s3://bucket-1/model.tar.gz"}
    with pytest.raises(ClientError) as refused:
        sagemaker.create_model(ModelName="m0", PrimaryContainer=container)
    assert refused.value.response["Error"]["Code"] == "ValidationException"
    assert "ExecutionRoleArn" in refused.value.response["Error"]["Message"]
    with pytest.raises(ClientError, match="Could not find model"):
        sagemaker.describe_model(ModelName="m0")
    with pytest.raises(ClientError, match="does not exist"):
        sagemaker.create_model(
            ModelName="m2", ExecutionRoleArn=ROLE, PrimaryContainer={"ModelPackageName": "arn:nothing/1"}
        )
    with pytest.raises(ClientError, match="Could not find endpoint"):
        sagemaker.describe_endpoint(EndpointName="nowhere")


def test_no_container_runs_without_its_role(tmp_path: Path) -> None:
    """A job or a model without a role gets no credentials (this process's are the administrator's): its container
    is refused before anything starts, as is a model stored without one."""
    from aws_emulators.sagemaker.hosting import launch
    from aws_emulators.sagemaker.runtime import ContainerError, ProcessRuntime, aws_environment

    for role in (None, ""):
        with pytest.raises(ContainerError, match="only under its role"):
            aws_environment(role)
    model = {
        "ModelName": "m0",
        "PrimaryContainer": {"Image": "fhe-inference:latest", "ModelDataUrl": "s3://bucket-1/model.tar.gz"},
        "ExecutionRoleArn": "",
    }
    with pytest.raises(RuntimeError, match="no execution role"):
        launch(ProcessRuntime(), tmp_path, "e-v1", {}, model)
    assert not any(tmp_path.iterdir())


def test_invoke_endpoint_async_on_a_missing_endpoint_is_a_validation_error(sagemaker: Any) -> None:
    runtime = boto3.client("sagemaker-runtime", region_name="us-east-1", endpoint_url=sagemaker.meta.endpoint_url)
    with pytest.raises(ClientError) as raised:
        runtime.invoke_endpoint_async(EndpointName="nowhere", InputLocation="s3://bucket-1/in.json")
    assert raised.value.response["Error"]["Code"] == "ValidationError"
    assert "nowhere" in raised.value.response["Error"]["Message"]


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


def test_a_service_of_the_stack_never_inherits_another_stacks_endpoints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The local AWS hands its environment to its Lambda functions: a second stack started from a process that
    points at the first must not send its functions' calls there."""
    import sys
    import time

    from local import lifecycle

    monkeypatch.setenv("FHE_LOCAL_STACK_DIR", str(tmp_path))
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:2")
    probe = lifecycle.Service("probe", 0, "/")
    script = "import os; print(sorted(k for k in os.environ if k.startswith('AWS_ENDPOINT_URL')))"
    lifecycle._spawn(probe, [sys.executable, "-c", script], {"AWS_ENDPOINT_URL_SAGEMAKER": "http://127.0.0.1:3"})
    deadline = time.monotonic() + 30
    while "]" not in probe.log_file.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert probe.log_file.read_text().strip() == "['AWS_ENDPOINT_URL_SAGEMAKER']"


def test_every_call_is_authorized_for_its_action_on_the_resource_it_names(tmp_path: Path) -> None:
    """The local SageMaker asks the local AWS (here a stand-in answering from a fixed grant) about each call: the
    signed request as received, the action, the resource, and iam:PassRole for a role handed on."""
    from aws_emulators.sagemaker.authorization import Authorizer, SignedRequest

    asked: list[tuple[str, str]] = []
    granted = {("sagemaker:CreatePipeline", "arn:aws:sagemaker:us-east-1:000000000000:pipeline/p"),
               ("iam:PassRole", ROLE), ("sagemaker:ListEndpoints", "*")}  # fmt: skip

    class StandIn(Authorizer):
        def _ask(
            self, request: SignedRequest, action: str, resource: str, context: dict[str, str] | None = None
        ) -> dict[str, Any]:
            assert context == ({"iam:PassedToService": "sagemaker.amazonaws.com"} if action == "iam:PassRole" else {})
            signed = dict((k.lower(), v) for k, v in request.headers)
            assert signed["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDOWNER/")
            assert request.body == b"" or json.loads(request.body) is not None
            asked.append((action, resource))
            if (action, resource) in granted:
                return {"decision": "Allow", "principal": "arn:aws:sts::000000000000:assumed-role/owner/s"}
            return {"decision": "ImplicitDeny", "principal": "arn:aws:sts::000000000000:assumed-role/owner/s"}

    service = LocalSageMaker(tmp_path, authorizer=StandIn("https://127.0.0.1:1", None))
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(service))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    owner = {"aws_access_key_id": "AKIDOWNER", "aws_secret_access_key": "secret", "region_name": "us-east-1"}
    try:
        sagemaker = boto3.client("sagemaker", endpoint_url=url, **owner)
        sagemaker.create_pipeline(PipelineName="p", PipelineDefinition=json.dumps(DEFINITION), RoleArn=ROLE)
        assert asked == [
            ("sagemaker:CreatePipeline", "arn:aws:sagemaker:us-east-1:000000000000:pipeline/p"),
            ("iam:PassRole", ROLE),
        ]
        assert sagemaker.list_endpoints()["Endpoints"] == []
        with pytest.raises(ClientError) as raised:
            sagemaker.describe_endpoint(EndpointName="Other-V1")
        error = raised.value.response["Error"]
        assert error["Code"] == "AccessDeniedException"
        assert error["Message"] == (
            "User: arn:aws:sts::000000000000:assumed-role/owner/s is not authorized to perform: "
            "sagemaker:DescribeEndpoint on resource: arn:aws:sagemaker:us-east-1:000000000000:endpoint/other-v1 "
            "because no identity-based policy allows the sagemaker:DescribeEndpoint action"
        )
        runtime = boto3.client("sagemaker-runtime", endpoint_url=url, **owner)
        with pytest.raises(ClientError, match=r"sagemaker:InvokeEndpointAsync on resource: .*:endpoint/e-v1 "):
            runtime.invoke_endpoint_async(EndpointName="e-v1", InputLocation="s3://b/k")
    finally:
        server.shutdown()
        service.endpoints.shutdown()
        service.store.close()
