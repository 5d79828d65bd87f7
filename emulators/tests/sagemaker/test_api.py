"""The local SageMaker's API through boto3, served in-process: pipelines and their executions, the model
registry, models and endpoints refused before anything is hosted, and every call authorized by IAM."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from sagemaker_fixtures import ROLE, Served, serve

from aws_emulators.sagemaker.authorization import Authorizer, SignedRequest
from aws_emulators.sagemaker.configuration import Configuration
from aws_emulators.sagemaker.container_runtime import ContainerError, aws_environment
from aws_emulators.sagemaker.hosting import launch
from aws_emulators.sagemaker.server import LocalSageMaker

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


def test_unknown_operation_has_sagemakers_error_shape(served: Served) -> None:
    sagemaker = served.client("sagemaker")
    with pytest.raises(ClientError) as raised:
        sagemaker.list_domains()
    assert raised.value.response["Error"]["Code"] == "UnknownOperationException"


def test_pipeline_lifecycle_and_fail_step(served: Served) -> None:
    sagemaker = served.client("sagemaker")
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


def test_model_registry_versions_and_approval(served: Served) -> None:
    sagemaker = served.client("sagemaker")
    sagemaker.create_model_package_group(ModelPackageGroupName="g")
    spec = {
        "Containers": [{"Image": "serving:latest", "ModelDataUrl": "s3://b/m.tar.gz"}],
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


def test_endpoint_api_validates_before_hosting(served: Served) -> None:
    sagemaker = served.client("sagemaker")
    with pytest.raises(ClientError, match="Could not find model"):
        sagemaker.create_endpoint_config(
            EndpointConfigName="c1",
            ProductionVariants=[{"VariantName": "v", "ModelName": "missing", "InstanceType": "ml.m5.large"}],
        )
    with pytest.raises(ClientError, match="PrimaryContainer"):
        sagemaker.create_model(ModelName="m1", ExecutionRoleArn=ROLE)
    # SageMaker serves a model only under its own role: without one the model is refused, not run with whatever
    # credentials the server has.
    container = {"Image": "serving:latest", "ModelDataUrl": "s3://bucket-1/model.tar.gz"}
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
    for role in (None, ""):
        with pytest.raises(ContainerError, match="only under its role"):
            aws_environment(role)
    model = {
        "ModelName": "m0",
        "PrimaryContainer": {"Image": "serving:latest", "ModelDataUrl": "s3://bucket-1/model.tar.gz"},
        "ExecutionRoleArn": "",
    }
    service = LocalSageMaker(tmp_path / "state", Configuration(process_commands={"inference": ["true"]}))
    try:
        with pytest.raises(RuntimeError, match="no execution role"):
            launch(service.endpoints.backend, "e-v1", {}, model)
    finally:
        service.endpoints.shutdown()
        service.store.close()
    assert not (tmp_path / "state" / "endpoints").exists()


def test_invoke_endpoint_async_on_a_missing_endpoint_is_a_validation_error(served: Served) -> None:
    runtime = served.client("sagemaker-runtime")
    with pytest.raises(ClientError) as raised:
        runtime.invoke_endpoint_async(EndpointName="nowhere", InputLocation="s3://bucket-1/in.json")
    assert raised.value.response["Error"]["Code"] == "ValidationError"
    assert "nowhere" in raised.value.response["Error"]["Message"]


def test_every_call_is_authorized_for_its_action_on_the_resource_it_names(tmp_path: Path) -> None:
    """The local SageMaker asks the local AWS (here a stand-in answering from a fixed grant) about each call: the
    signed request as received, the action, the resource, and iam:PassRole for a role handed on."""
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

    served = serve(tmp_path / "state", authorizer=StandIn("https://127.0.0.1:1", None))
    owner = {"aws_access_key_id": "AKIDOWNER", "aws_secret_access_key": "secret"}
    try:
        sagemaker = served.client("sagemaker", **owner)
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
        runtime = served.client("sagemaker-runtime", **owner)
        with pytest.raises(ClientError, match=r"sagemaker:InvokeEndpointAsync on resource: .*:endpoint/e-v1 "):
            runtime.invoke_endpoint_async(EndpointName="e-v1", InputLocation="s3://b/k")
    finally:
        served.stop()
    assert served.responses.errors() == []
