"""The endpoint's scaling: the local SageMaker's scaling decisions, and the workflow's concurrency that follows the
endpoint's largest size. (The policies each served version's stack declares: tests/unit/test_served_versions.py.)"""

from __future__ import annotations

import json

import pytest
from aws_emulators.sagemaker.autoscaling import ScalingState, decide

from common.settings import ENDPOINT_OUTPUTS, PIPELINE_OUTPUTS, EndpointSettings, from_outputs
from infrastructure import package
from infrastructure.deployment import Deployment

TARGET = {"MinCapacity": 0, "MaxCapacity": 2}
STEP = {
    "PolicyARN": "arn:step",
    "PolicyName": "from-zero",
    "PolicyType": "StepScaling",
    "StepScalingPolicyConfiguration": {
        "AdjustmentType": "ChangeInCapacity",
        "Cooldown": 5,
        "StepAdjustments": [{"MetricIntervalLowerBound": 0.0, "ScalingAdjustment": 1}],
    },
}
TRACKING = {
    "PolicyARN": "arn:tracking",
    "PolicyName": "backlog",
    "PolicyType": "TargetTrackingScaling",
    "TargetTrackingScalingPolicyConfiguration": {"TargetValue": 2.0, "ScaleInCooldown": 30, "ScaleOutCooldown": 10},
}


def test_from_zero_only_through_a_step_policy_an_alarm_fires() -> None:
    state = ScalingState(desired=0)
    assert decide(state, TARGET, [STEP, TRACKING], set(), backlog=3, now=100.0) == (0, ""), "no alarm wired"
    after, cause = decide(state, TARGET, [STEP, TRACKING], {"arn:step"}, backlog=3, now=100.0)
    assert after == 1 and "HasBacklogWithoutCapacity" in cause and "from-zero" in cause
    assert decide(state, TARGET, [STEP, TRACKING], {"arn:step"}, backlog=0, now=100.0) == (0, ""), "nothing waits"


def test_target_tracking_scales_out_within_the_maximum_and_in_only_after_the_cooldown() -> None:
    state = ScalingState(desired=1, last_needed=0.0, last_scale_out=0.0)
    after, _ = decide(state, TARGET, [STEP, TRACKING], set(), backlog=9, now=100.0)
    assert after == 2, "ceil(9 / 2) = 5, held to the maximum"
    state = ScalingState(desired=2, last_needed=100.0, last_scale_out=100.0)
    assert decide(state, TARGET, [TRACKING], set(), backlog=1, now=120.0) == (2, ""), "within the scale-in cooldown"
    after, cause = decide(state, TARGET, [TRACKING], set(), backlog=0, now=131.0)
    assert after == 0 and "backlog 0" in cause
    busy = ScalingState(desired=1, last_needed=0.0, last_scale_out=0.0)
    assert decide(busy, TARGET, [TRACKING], set(), backlog=2, now=500.0) == (1, ""), "one instance is needed"
    assert busy.last_needed == 500.0


def test_a_desired_count_outside_the_targets_limits_is_brought_back() -> None:
    assert decide(ScalingState(desired=5), TARGET, [], set(), backlog=0, now=0.0)[0] == 2


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
