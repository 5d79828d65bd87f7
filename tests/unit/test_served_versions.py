"""Each served model version is a stack (infrastructure/served_version.yaml): the template passes cfn-lint and
wires the scaling as AWS needs it (the alarm fires the step policy, target tracking reads the backlog per
instance), the deployment fills exactly its parameters, and on moto's CloudFormation a version's stack is made
under the service role with its tags, holds the Model, EndpointConfig and Endpoint as the package needs them, is
updated in place by a redeploy and found and deleted by teardown. (moto's CloudFormation makes neither scaling
resources nor alarms, and names SageMaker resources itself: the integration tests read those on the local stack.)"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from moto import mock_aws

from common import aws
from common.artifacts import EVALUATORS_VARIABLE, PACKAGE_ARN_VARIABLE
from common.settings import EndpointSettings
from common.stacks import resources as stack_resources
from infrastructure.templates import load
from pipelines import endpoint

TEMPLATE = load(endpoint.SERVED_VERSION_TEMPLATE)
RESOURCES = TEMPLATE["Resources"]
SETTINGS = EndpointSettings(
    "group",
    "bundles",
    "arn:aws:iam::123456789012:role/acme-endpoint",
    endpoint_name="acme-inference",
    instance_type="ml.c5.4xlarge",  # one moto's SageMaker knows
    max_instances=3,
    stack_role_arn="arn:aws:iam::123456789012:role/acme-served-version-stacks",
)
TOPICS = ("arn:aws:sns:us-east-1:123456789012:s", "arn:aws:sns:us-east-1:123456789012:e")


def test_the_template_passes_cfn_lint() -> None:
    lint = Path(sys.executable).parent / "cfn-lint"
    result = subprocess.run([str(lint), str(endpoint.SERVED_VERSION_TEMPLATE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_deployment_gives_every_parameter_and_no_other() -> None:
    parameters = endpoint.stack_parameters(SETTINGS, "arn:pkg/1", 1, TOPICS)
    assert set(parameters) == set(TEMPLATE["Parameters"])
    assert parameters["EndpointName"] == "acme-inference-v1"
    assert parameters["OutputPath"] == "s3://bundles/responses/acme-inference/output"
    # New model or configuration settings name a new Model and EndpointConfig; scaling alone changes neither.
    assert endpoint.stack_parameters(SETTINGS, "arn:pkg/1", 1, TOPICS)["Revision"] == parameters["Revision"]
    more = replace(SETTINGS, max_concurrent_invocations=4)
    assert endpoint.stack_parameters(more, "arn:pkg/1", 1, TOPICS)["Revision"] != parameters["Revision"]
    wider = replace(SETTINGS, max_instances=5, scale_in_cooldown=30)
    assert endpoint.stack_parameters(wider, "arn:pkg/1", 1, TOPICS)["Revision"] == parameters["Revision"]


def test_the_model_names_its_package_and_evaluators_and_the_alarm_fires_the_step_policy() -> None:
    environment = RESOURCES["Model"]["Properties"]["PrimaryContainer"]["Environment"]
    assert environment == {
        PACKAGE_ARN_VARIABLE: {"Ref": "ModelPackageArn"},
        EVALUATORS_VARIABLE: {"Ref": "InvocationsPerInstance"},
    }
    config = RESOURCES["EndpointConfig"]["Properties"]["AsyncInferenceConfig"]
    assert config["ClientConfig"]["MaxConcurrentInvocationsPerInstance"] == {"Ref": "InvocationsPerInstance"}
    target = RESOURCES["ScalableTarget"]["Properties"]
    assert target["ScalableDimension"] == "sagemaker:variant:DesiredInstanceCount"
    assert (target["MinCapacity"], target["MaxCapacity"]) == ({"Ref": "MinInstances"}, {"Ref": "MaxInstances"})
    policies = {
        p["Properties"]["PolicyType"]: p["Properties"]
        for p in RESOURCES.values()
        if p["Type"].endswith("ScalingPolicy")
    }
    assert set(policies) == {"TargetTrackingScaling", "StepScaling"}
    assert all(p["ScalingTargetId"] == {"Ref": "ScalableTarget"} for p in policies.values())
    tracking = policies["TargetTrackingScaling"]["TargetTrackingScalingPolicyConfiguration"]
    assert tracking["CustomizedMetricSpecification"]["MetricName"] == "ApproximateBacklogSizePerInstance"
    step = policies["StepScaling"]["StepScalingPolicyConfiguration"]
    assert step["StepAdjustments"] == [{"MetricIntervalLowerBound": 0, "ScalingAdjustment": 1}]
    alarm = RESOURCES["BacklogWithoutCapacityAlarm"]["Properties"]
    assert alarm["MetricName"] == "HasBacklogWithoutCapacity"
    assert alarm["AlarmActions"] == [{"Ref": "FromZeroPolicy"}]
    assert RESOURCES["FromZeroPolicy"]["Properties"]["PolicyType"] == "StepScaling"


def test_impossible_limits_are_refused_before_any_call() -> None:
    with pytest.raises(endpoint.EndpointError, match="minimum"):
        endpoint.deploy_endpoint(replace(SETTINGS, min_instances=3, max_instances=2))


@pytest.fixture
def moto_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """moto with an Approved model package (version 1) in ``group``; yields its ARN."""
    for key, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    with mock_aws():
        sagemaker = aws.client("sagemaker")
        sagemaker.create_model_package_group(ModelPackageGroupName="group")
        container = {"Image": "inference:1", "ModelDataUrl": "s3://models/m.tar.gz"}
        yield sagemaker.create_model_package(
            ModelPackageGroupName="group",
            ModelApprovalStatus="Approved",
            InferenceSpecification={
                "Containers": [container],
                "SupportedContentTypes": ["application/json"],
                "SupportedResponseMIMETypes": ["application/json"],
            },
        )["ModelPackageArn"]


def _resource(stack: str, logical_id: str) -> str:
    """The name of one of the stack's SageMaker resources, read from the stack."""
    return str(stack_resources(stack)[logical_id]["PhysicalResourceId"]).rsplit("/", 1)[1]


@pytest.mark.filterwarnings("ignore:Tried to parse AWS::")  # the scaling and the alarm (above)
def test_a_version_is_a_stack_made_under_the_service_role_updated_in_place_and_deleted(moto_registry: str) -> None:
    lines: list[str] = []
    deployed = endpoint.deploy_endpoint(SETTINGS, wait_seconds=30, report=lines.append)
    stack = deployed["stack"]
    assert stack == "acme-inference-v1" and any("CREATE_COMPLETE" in line for line in lines), lines
    described: dict[str, Any] = aws.client("cloudformation").describe_stacks(StackName=stack)["Stacks"][0]
    assert described["RoleARN"] == SETTINGS.stack_role_arn
    assert {t["Key"]: t["Value"] for t in described["Tags"]} == {
        endpoint.FAMILY_TAG: "acme-inference",
        endpoint.VERSION_TAG: "1",
        endpoint.PACKAGE_TAG: moto_registry,
    }
    sagemaker = aws.client("sagemaker")
    model = sagemaker.describe_model(ModelName=_resource(stack, "Model"))
    assert model["PrimaryContainer"]["ModelPackageName"] == moto_registry
    assert model["PrimaryContainer"]["Environment"] == {PACKAGE_ARN_VARIABLE: moto_registry, EVALUATORS_VARIABLE: "2"}
    assert model["ExecutionRoleArn"] == SETTINGS.role_arn
    config = sagemaker.describe_endpoint_config(EndpointConfigName=_resource(stack, "EndpointConfig"))
    output = config["AsyncInferenceConfig"]["OutputConfig"]
    assert output["S3OutputPath"] == "s3://bundles/responses/acme-inference/output"
    assert output["NotificationConfig"]["SuccessTopic"] == deployed["success_topic"]
    live = sagemaker.describe_endpoint(EndpointName=_resource(stack, "Endpoint"))
    assert live["EndpointConfigName"] == deployed["endpoint_config"] == config["EndpointConfigName"]

    # A redeploy with more invocations per instance updates the same stack to a new configuration.
    again = endpoint.deploy_endpoint(replace(SETTINGS, max_concurrent_invocations=4), wait_seconds=30)
    assert again["stack"] == stack and again["endpoint_config"] != deployed["endpoint_config"]
    config = sagemaker.describe_endpoint_config(EndpointConfigName=_resource(stack, "EndpointConfig"))
    assert config["AsyncInferenceConfig"]["ClientConfig"]["MaxConcurrentInvocationsPerInstance"] == 4

    # Teardown finds the family's versions by their tag, not another family's, and deletes their stacks.
    assert endpoint.version_stacks("acme-inference") == [stack]
    assert endpoint.version_stacks("acme") == []
    assert endpoint.delete_version_stack("acme-inference", 1) is True
    assert endpoint.version_stacks("acme-inference") == []
    assert sagemaker.list_endpoints()["Endpoints"] == []
    assert endpoint.delete_version_stack("acme-inference", 1) is False
