"""The emulator answers as the service does: a tour calls every operation the server's dispatch table serves, and
each response (successes and refusals alike) is checked against botocore's model of its operation. An operation
served but not answered successfully on the tour fails the test, so a new operation comes with its check."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from sagemaker_fixtures import NO_AWS, REGION, ROLE, Served, serve
from service_model_check import ResponseLog, service_model, shape_errors, success_errors

from aws_emulators.sagemaker.configuration import Configuration

FAST = Configuration(region=REGION, scaling_period_s=0.2, process_commands={"quick": [sys.executable, "-c", "pass"]})
IMAGE = "000000000000.dkr.ecr.us-east-1.amazonaws.com/tour-serving:1"  # no stand-in: its instances fail to start

DEFINITION = {
    "Version": "2020-12-01",
    "Parameters": [
        {"Name": "Threshold", "Type": "Float", "DefaultValue": 0.5},
        {"Name": "Message", "Type": "String", "DefaultValue": "quality too low"},
    ],
    "Steps": [
        {
            "Name": "Prepare",
            "Type": "Processing",
            "Arguments": {
                "ProcessingResources": {
                    "ClusterConfig": {"InstanceCount": 1, "InstanceType": "ml.m5.large", "VolumeSizeInGB": 30}
                },
                "AppSpecification": {"ImageUri": "quick:1", "ContainerArguments": ["prepare"]},
                "RoleArn": ROLE,
            },
        },
        {
            "Name": "Fit",
            "Type": "Training",
            "Arguments": {
                "AlgorithmSpecification": {"TrainingImage": "quick:1", "TrainingInputMode": "File"},
                "OutputDataConfig": {"S3OutputPath": "s3://tour-bucket/models"},
                "ResourceConfig": {"InstanceCount": 1, "InstanceType": "ml.m5.large", "VolumeSizeInGB": 30},
                "StoppingCondition": {"MaxRuntimeInSeconds": 3600},
                "RoleArn": ROLE,
            },
        },
        {
            "Name": "Check",
            "Type": "Condition",
            "Arguments": {
                "Conditions": [
                    {"Type": "GreaterThanOrEqualTo", "LeftValue": 1.0, "RightValue": {"Get": "Parameters.Threshold"}}
                ],
                "IfSteps": [
                    {
                        "Name": "Register",
                        "Type": "RegisterModel",
                        "Arguments": {
                            "ModelPackageGroupName": "tour-models",
                            "InferenceSpecification": {
                                "Containers": [{"Image": IMAGE, "ModelDataUrl": "s3://tour-bucket/model.tar.gz"}],
                                "SupportedContentTypes": ["application/octet-stream"],
                                "SupportedResponseMIMETypes": ["application/octet-stream"],
                            },
                            "ModelApprovalStatus": "PendingManualApproval",
                        },
                    }
                ],
                "ElseSteps": [
                    {"Name": "TooLow", "Type": "Fail", "Arguments": {"ErrorMessage": {"Get": "Parameters.Message"}}}
                ],
            },
        },
    ],
}


def wait_for(what: str, condition: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := condition():
            return found
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {timeout} s")


@contextmanager
def silent_aws() -> Iterator[None]:
    """An AWS that takes connections and never answers, while the block runs: what the emulator asks of it waits
    (until the block ends and the connections close)."""
    saved = os.environ.get("AWS_ENDPOINT_URL")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        os.environ["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{listener.getsockname()[1]}"
        try:
            yield
        finally:
            os.environ["AWS_ENDPOINT_URL"] = saved or NO_AWS


def pipeline_tour(served: Served) -> None:
    sagemaker = served.client("sagemaker")
    sagemaker.create_pipeline(PipelineName="tour", PipelineDefinition=json.dumps(DEFINITION), RoleArn=ROLE)
    sagemaker.update_pipeline(PipelineName="tour", PipelineDescription="every step kind", RoleArn=ROLE)
    sagemaker.describe_pipeline(PipelineName="tour")
    sagemaker.list_pipelines(PipelineNamePrefix="to")
    arn = sagemaker.start_pipeline_execution(
        PipelineName="tour", PipelineParameters=[{"Name": "Threshold", "Value": "2"}]
    )["PipelineExecutionArn"]
    status = wait_for(
        "the execution ends",
        lambda: (
            sagemaker.describe_pipeline_execution(PipelineExecutionArn=arn)["PipelineExecutionStatus"]
            not in ("Executing", "Stopping")
        ),
    )
    assert status
    sagemaker.list_pipeline_executions(PipelineName="tour", SortOrder="Ascending")
    steps = sagemaker.list_pipeline_execution_steps(PipelineExecutionArn=arn)["PipelineExecutionSteps"]
    assert [s["StepName"] for s in steps] == ["Prepare"], "its role cannot be assumed here: the job fails"
    sagemaker.list_pipeline_parameters_for_execution(PipelineExecutionArn=arn)
    sagemaker.describe_processing_job(ProcessingJobName=steps[0]["Metadata"]["ProcessingJob"]["Arn"].split("/")[-1])
    with pytest.raises(ClientError):
        sagemaker.describe_processing_job(ProcessingJobName="no-such-job")
    # A training job: the same definition with its first step left out.
    fit_only = {**DEFINITION, "Steps": DEFINITION["Steps"][1:2]}
    sagemaker.create_pipeline(PipelineName="fit", PipelineDefinition=json.dumps(fit_only), RoleArn=ROLE)
    fit = sagemaker.start_pipeline_execution(PipelineName="fit")["PipelineExecutionArn"]
    wait_for(
        "the training step ends",
        lambda: sagemaker.describe_pipeline_execution(PipelineExecutionArn=fit)["PipelineExecutionStatus"] == "Failed",
    )
    [step] = sagemaker.list_pipeline_execution_steps(PipelineExecutionArn=fit)["PipelineExecutionSteps"]
    sagemaker.describe_training_job(TrainingJobName=step["Metadata"]["TrainingJob"]["Arn"].split("/")[-1])
    # An execution stopped while its job waits on AWS.
    with silent_aws():
        waiting = sagemaker.start_pipeline_execution(PipelineName="fit")["PipelineExecutionArn"]
        sagemaker.stop_pipeline_execution(PipelineExecutionArn=waiting)
        sagemaker.describe_pipeline_execution(PipelineExecutionArn=waiting)

    def stopped() -> bool:
        described = sagemaker.describe_pipeline_execution(PipelineExecutionArn=waiting)
        return bool(described["PipelineExecutionStatus"] == "Stopped")

    wait_for("the stopped execution ends", stopped)
    sagemaker.delete_pipeline(PipelineName="fit")


def registry_tour(served: Served) -> None:
    sagemaker = served.client("sagemaker")
    sagemaker.create_model_package_group(ModelPackageGroupName="tour-models", ModelPackageGroupDescription="tour")
    sagemaker.describe_model_package_group(ModelPackageGroupName="tour-models")
    sagemaker.list_model_package_groups(NameContains="tour")
    spec = DEFINITION["Steps"][2]["Arguments"]["IfSteps"][0]["Arguments"]["InferenceSpecification"]  # type: ignore[index]
    arn = sagemaker.create_model_package(
        ModelPackageGroupName="tour-models",
        InferenceSpecification=spec,
        CustomerMetadataProperties={"source": "tour"},
        ModelMetrics={"ModelQuality": {"Statistics": {"ContentType": "application/json", "S3Uri": "s3://b/e.json"}}},
    )["ModelPackageArn"]
    sagemaker.update_model_package(ModelPackageArn=arn, ModelApprovalStatus="Approved", ApprovalDescription="ok")
    sagemaker.describe_model_package(ModelPackageName=arn)
    sagemaker.list_model_packages(ModelPackageGroupName="tour-models", ModelApprovalStatus="Approved")
    with pytest.raises(ClientError):
        sagemaker.describe_model_package(ModelPackageName=arn[:-1] + "9")


def hosting_tour(served: Served, tmp_path: Path) -> Served:
    """Models, configurations and an endpoint whose instances cannot start; then, after a restart, the same
    endpoint scaled to zero, which queues what it is asked; its scaling. Returns the restarted server."""
    sagemaker = served.client("sagemaker")
    sagemaker.create_model(
        ModelName="tour-model", ExecutionRoleArn=ROLE, PrimaryContainer={"ModelPackageName": _approved(sagemaker)}
    )
    sagemaker.describe_model(ModelName="tour-model")
    async_config = {
        "OutputConfig": {"S3OutputPath": "s3://tour-bucket/responses", "S3FailurePath": "s3://tour-bucket/failures"},
        "ClientConfig": {"MaxConcurrentInvocationsPerInstance": 2},
    }
    variant = {"VariantName": "AllTraffic", "ModelName": "tour-model", "InstanceType": "ml.m5.large",
               "InitialInstanceCount": 1}  # fmt: skip
    for name in ("tour-config", "tour-config-2"):
        sagemaker.create_endpoint_config(
            EndpointConfigName=name, ProductionVariants=[variant], AsyncInferenceConfig=async_config
        )
    sagemaker.describe_endpoint_config(EndpointConfigName="tour-config")
    sagemaker.create_endpoint(EndpointName="tour-v1", EndpointConfigName="tour-config")
    failed = lambda: sagemaker.describe_endpoint(EndpointName="tour-v1")["EndpointStatus"] == "Failed"  # noqa: E731
    wait_for("the endpoint fails to start", failed)
    sagemaker.update_endpoint(EndpointName="tour-v1", EndpointConfigName="tour-config-2")
    wait_for("the update fails too", failed)
    sagemaker.list_endpoints(NameContains="tour")
    with pytest.raises(ClientError):
        served.client("sagemaker-runtime").invoke_endpoint_async(EndpointName="nowhere", InputLocation="s3://b/k")

    # The endpoint as a server that scaled it to zero left it: in service, its requests waiting for an instance.
    served.stop()
    state = served.service.state_dir
    from aws_emulators.sagemaker.store import Store

    store = Store(state / "sagemaker.sqlite3")
    endpoint = store.get("endpoint", "tour-v1")
    assert endpoint is not None
    store.put("endpoint", "tour-v1", {**endpoint, "EndpointStatus": "InService", "DesiredInstanceCount": 0})
    store.close()
    restarted = serve(state, FAST)
    restarted.responses = served.responses
    runtime = restarted.client("sagemaker-runtime")
    runtime.invoke_endpoint_async(EndpointName="tour-v1", InputLocation="s3://tour-bucket/requests/1.bin")
    restarted.client("sagemaker").describe_endpoint(EndpointName="tour-v1")
    return restarted


def _approved(sagemaker: Any) -> str:
    packages = sagemaker.list_model_packages(ModelPackageGroupName="tour-models", ModelApprovalStatus="Approved")
    return str(packages["ModelPackageSummaryList"][0]["ModelPackageArn"])


def scaling_tour(served: Served) -> None:
    scaling = served.client("application-autoscaling")
    target = {"ServiceNamespace": "sagemaker", "ResourceId": "endpoint/tour-v1/variant/AllTraffic",
              "ScalableDimension": "sagemaker:variant:DesiredInstanceCount"}  # fmt: skip
    scaling.register_scalable_target(**target, MinCapacity=1, MaxCapacity=2)
    scaling.describe_scalable_targets(ServiceNamespace="sagemaker", ResourceIds=[target["ResourceId"]])
    scaling.put_scaling_policy(
        **target,
        PolicyName="backlog",
        PolicyType="TargetTrackingScaling",
        TargetTrackingScalingPolicyConfiguration={
            "TargetValue": 2.0,
            "CustomizedMetricSpecification": {
                "MetricName": "ApproximateBacklogSizePerInstance",
                "Namespace": "AWS/SageMaker",
                "Dimensions": [{"Name": "EndpointName", "Value": "tour-v1"}],
                "Statistic": "Average",
            },
            "ScaleInCooldown": 60,
            "ScaleOutCooldown": 10,
        },
    )
    scaling.put_scaling_policy(
        **target,
        PolicyName="from-zero",
        PolicyType="StepScaling",
        StepScalingPolicyConfiguration={
            "AdjustmentType": "ChangeInCapacity",
            "Cooldown": 30,
            "MetricAggregationType": "Maximum",
            "StepAdjustments": [{"MetricIntervalLowerBound": 0.0, "ScalingAdjustment": 1}],
        },
    )
    scaling.describe_scaling_policies(ServiceNamespace="sagemaker", ResourceId=target["ResourceId"])
    # Desired 0 under a minimum of 1: the next round brings it back, and says so.
    wait_for(
        "a scaling activity",
        lambda: scaling.describe_scaling_activities(ServiceNamespace="sagemaker", ResourceId=target["ResourceId"])[
            "ScalingActivities"
        ],
    )
    scaling.delete_scaling_policy(**{k: target[k] for k in target}, PolicyName="from-zero")
    with pytest.raises(ClientError):
        scaling.delete_scaling_policy(**target, PolicyName="from-zero")
    scaling.deregister_scalable_target(**target)


def cleanup_tour(served: Served) -> None:
    sagemaker = served.client("sagemaker")
    sagemaker.delete_endpoint(EndpointName="tour-v1")
    sagemaker.delete_endpoint_config(EndpointConfigName="tour-config")
    sagemaker.delete_model(ModelName="tour-model")
    with pytest.raises(ClientError):
        sagemaker.list_domains()  # not served: UnknownOperationException


def test_every_served_operation_answers_as_its_service_model_says(tmp_path: Path) -> None:
    served = serve(tmp_path / "state", FAST)
    try:
        pipeline_tour(served)
        registry_tour(served)
        served = hosting_tour(served, tmp_path)
        scaling_tour(served)
        cleanup_tour(served)
    finally:
        served.stop()
    assert served.responses.errors() == [], "\n".join(served.responses.errors())
    served_operations = {(s, o) for s, operations in served.service.services.items() for o in operations}
    missing = served_operations - served.responses.answered()
    assert not missing, f"served, but no response of theirs was checked against the model: {sorted(missing)}"
    assert {a.status for a in served.responses.answers if a.status >= 400} >= {400}, "refusals were checked too"


def test_the_check_refuses_what_the_service_would_never_answer() -> None:
    """The check itself: a missing required member, a wrong type, an unknown enum value, an unknown member, a
    string for a timestamp, and the wrong HTTP status are each caught."""
    sagemaker = service_model("sagemaker")
    describe = sagemaker.operation_model("DescribePipelineExecution")
    good: dict[str, Any] = {
        "PipelineExecutionArn": "arn:aws:sagemaker:us-east-1:0:pipeline/p/execution/x",
        "CreationTime": 1.0,
        "PipelineExecutionStatus": "Succeeded",
    }
    assert success_errors(describe, 200, {}, json.dumps(good).encode()) == []
    changes: list[tuple[dict[str, Any], str]] = [
        ({"PipelineExecutionStatus": "Done"}, "not one of"),
        ({"CreationTime": "yesterday"}, "not a timestamp"),
        ({"PipelineVersionId": "1"}, "not an integer"),
        ({"Extra": 1}, "no such member"),
        ({"CreatedBy": {"IamIdentity": []}}, "not the structure"),
    ]
    for change, expected in changes:
        [error] = success_errors(describe, 200, {}, json.dumps({**good, **change}).encode())
        assert expected in error
    package = sagemaker.operation_model("DescribeModelPackage").output_shape
    assert package is not None
    missing = shape_errors({}, package, "DescribeModelPackage")
    assert "DescribeModelPackage.ModelPackageName: required by DescribeModelPackageOutput, missing" in missing
    runtime = service_model("sagemaker-runtime").operation_model("InvokeEndpointAsync")
    assert any("HTTP 200" in e for e in success_errors(runtime, 200, {}, b'{"InferenceId": "i"}'))
    assert any("no such member" in e for e in success_errors(runtime, 202, {}, b'{"inferenceId": "i"}'))
    log = ResponseLog()
    assert log.errors() == [] and log.answered() == set()
