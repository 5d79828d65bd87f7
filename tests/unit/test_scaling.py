"""The endpoint's scaling: the policies the endpoint deployment writes (readable through boto3 on moto and on the
local SageMaker alike) and the workflow's concurrency that follows the endpoint's largest size. The local
SageMaker's own scaling decisions are tested with it (emulators/tests)."""

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

from common.settings import ENDPOINT_OUTPUTS, PIPELINE_OUTPUTS, EndpointSettings, from_outputs
from infrastructure import package
from infrastructure.deployment import Deployment
from pipelines.endpoint import configure_scaling, delete_endpoint, family_endpoints

RESOURCE = "endpoint/scaled-v1/variant/AllTraffic"


def _local_scaling(tmp_path: Path) -> Iterator[str]:
    service = LocalSageMaker(tmp_path)
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(service))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    service.endpoints.shutdown()
    service.store.close()


@pytest.fixture(params=["moto", "local"])
def scaling(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Application Auto Scaling through boto3: moto's, or the local SageMaker's (CloudWatch on moto)."""
    from moto import mock_aws

    for key, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    if request.param == "moto":
        with mock_aws():
            yield boto3.client("application-autoscaling", region_name="us-east-1")
        return
    local = _local_scaling(tmp_path)
    url = next(local)
    monkeypatch.setenv("AWS_ENDPOINT_URL_APPLICATION_AUTO_SCALING", url)
    with mock_aws(config={"core": {"passthrough": {"urls": [r"http://127\.0\.0\.1:\d+/.*"]}}}):
        yield boto3.client("application-autoscaling", region_name="us-east-1", endpoint_url=url)
    next(local, None)


def test_the_endpoint_deployment_writes_a_target_two_policies_and_the_alarm(scaling: Any) -> None:
    settings = EndpointSettings(
        "group", "bucket", "role", endpoint_name="scaled", max_instances=3, scale_in_cooldown=120, scale_out_cooldown=30
    )
    configure_scaling(settings, "scaled-v1")
    configure_scaling(settings, "scaled-v1")  # a redeploy updates, never duplicates
    keys = {"ServiceNamespace": "sagemaker", "ResourceIds": [RESOURCE]}
    [target] = scaling.describe_scalable_targets(**keys)["ScalableTargets"]
    assert (target["MinCapacity"], target["MaxCapacity"]) == (0, 3)
    assert target["ScalableDimension"] == "sagemaker:variant:DesiredInstanceCount"
    policies = {
        p["PolicyType"]: p
        for p in scaling.describe_scaling_policies(ServiceNamespace="sagemaker", ResourceId=RESOURCE)["ScalingPolicies"]
    }
    assert set(policies) == {"TargetTrackingScaling", "StepScaling"}
    tracking = policies["TargetTrackingScaling"]["TargetTrackingScalingPolicyConfiguration"]
    assert tracking["CustomizedMetricSpecification"]["MetricName"] == "ApproximateBacklogSizePerInstance"
    assert (tracking["ScaleInCooldown"], tracking["ScaleOutCooldown"]) == (120, 30)
    step = policies["StepScaling"]["StepScalingPolicyConfiguration"]
    assert step["StepAdjustments"][0]["ScalingAdjustment"] == 1
    [alarm] = boto3.client("cloudwatch", region_name="us-east-1").describe_alarms(AlarmNamePrefix="scaled-")[
        "MetricAlarms"
    ]
    assert alarm["MetricName"] == "HasBacklogWithoutCapacity"
    assert alarm["AlarmActions"] == [policies["StepScaling"]["PolicyARN"]]
    assert family_endpoints("scaled") == ["scaled-v1"], "teardown finds a version's scaling without its endpoint"
    assert delete_endpoint("scaled-v1") is False, "no such endpoint: its scaling goes all the same"
    assert scaling.describe_scalable_targets(**keys)["ScalableTargets"] == []
    remaining = scaling.describe_scaling_policies(ServiceNamespace="sagemaker", ResourceId=RESOURCE)
    assert remaining["ScalingPolicies"] == []


def test_impossible_limits_are_refused_before_any_call() -> None:
    from pipelines.endpoint import EndpointError

    with pytest.raises(EndpointError, match="minimum"):
        configure_scaling(EndpointSettings("g", "b", "r", min_instances=3, max_instances=2), "e-v1")


def test_the_maps_concurrency_is_the_endpoints_largest_size() -> None:
    definition = json.loads(package.state_machine_definition(6))
    shards = definition["States"][package.SHARD_MAP_STATE]
    assert shards["MaxConcurrency"] == 6
    assert shards["ItemProcessor"]["ProcessorConfig"] == {"Mode": "DISTRIBUTED", "ExecutionType": "STANDARD"}
    assert shards["ToleratedFailureCount"] == 0 and shards["ResultPath"] is None
    assert shards["ItemReader"]["Resource"] == "arn:aws:states:::s3:getObject"
    deployment = Deployment(max_instances=3, invocations_per_instance=2)
    assert deployment.map_concurrency == 6
    [machine] = [u for u in deployment.uploads() if u.parameter == "StateMachineKey"]
    assert json.loads(machine.body)["States"][package.SHARD_MAP_STATE]["MaxConcurrency"] == 6
    with pytest.raises(ValueError, match="at least 1"):
        package.state_machine_definition(0)


def test_a_deployments_recorded_scaling_reaches_the_endpoint_settings() -> None:
    outputs = {name: "x" for name in (*PIPELINE_OUTPUTS, *ENDPOINT_OUTPUTS)}
    recorded = {"EndpointMaxInstances": "4", "InvocationsPerInstance": "3", "ScaleInCooldownSeconds": "90"}
    endpoint = from_outputs({**outputs, **recorded}, region="us-east-1").endpoint
    assert (endpoint.max_instances, endpoint.max_concurrent_invocations, endpoint.scale_in_cooldown) == (4, 3, 90)
    assert (
        from_outputs(outputs, region="us-east-1").endpoint.max_instances
        == EndpointSettings("g", "b", "r").max_instances
    )


def test_retention_rules_never_retire_the_newest_version() -> None:
    from datetime import UTC, datetime, timedelta

    from pipelines.retirement import RetirementError, versions_to_retire

    now = datetime(2026, 12, 1, tzinfo=UTC)
    served = {1: now - timedelta(days=40), 2: now - timedelta(days=10), 3: now - timedelta(days=1)}
    assert versions_to_retire(served, keep=2, now=now) == [1]
    assert versions_to_retire(served, keep=5, now=now) == []
    assert versions_to_retire(served, older_than=timedelta(days=7), now=now) == [1, 2]
    assert versions_to_retire({3: now - timedelta(days=90)}, older_than=timedelta(days=7), now=now) == []
    assert versions_to_retire(served, keep=1, older_than=timedelta(days=30), now=now) == [1, 2]
    with pytest.raises(RetirementError, match="at least 1"):
        versions_to_retire(served, keep=0, now=now)
