"""The workflow's concurrency that follows the endpoint's largest size, and the scaling a deployment records. (The
policies each served version's stack declares: tests/unit/test_served_versions.py; the local SageMaker's own scaling
decisions: emulators/tests/sagemaker/test_autoscaling.py.)"""

from __future__ import annotations

import json

import pytest

from common.settings import ENDPOINT_OUTPUTS, PIPELINE_OUTPUTS, EndpointSettings, from_outputs
from infrastructure import package
from infrastructure.deployment import Deployment


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
