"""Application Auto Scaling for the endpoints: the decision each scaling round takes from the target, the policies
and the backlog, and the API that records them."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError
from sagemaker_fixtures import Served

from aws_emulators.sagemaker.autoscaling import ScalingState, decide

RESOURCE = "endpoint/scaled-v1/variant/AllTraffic"
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


KEYS = {
    "ServiceNamespace": "sagemaker",
    "ResourceId": RESOURCE,
    "ScalableDimension": "sagemaker:variant:DesiredInstanceCount",
}


def test_a_target_and_its_policies_are_registered_updated_and_removed(served: Served) -> None:
    scaling = served.client("application-autoscaling")
    first = scaling.register_scalable_target(**KEYS, MinCapacity=0, MaxCapacity=3)["ScalableTargetARN"]
    again = scaling.register_scalable_target(**KEYS, MaxCapacity=4)["ScalableTargetARN"]
    assert again == first, "registering again updates the target"
    [target] = scaling.describe_scalable_targets(ServiceNamespace="sagemaker", ResourceIds=[RESOURCE])[
        "ScalableTargets"
    ]
    assert (target["MinCapacity"], target["MaxCapacity"]) == (0, 4)
    policy = {"TargetValue": 2.0, "ScaleInCooldown": 120, "ScaleOutCooldown": 30}
    scaling.put_scaling_policy(
        **KEYS,
        PolicyName="backlog",
        PolicyType="TargetTrackingScaling",
        TargetTrackingScalingPolicyConfiguration=policy,
    )
    [described] = scaling.describe_scaling_policies(ServiceNamespace="sagemaker", ResourceId=RESOURCE)[
        "ScalingPolicies"
    ]
    assert described["TargetTrackingScalingPolicyConfiguration"]["ScaleInCooldown"] == 120
    with pytest.raises(ClientError, match="MinCapacity 5 is more than MaxCapacity 4"):
        scaling.register_scalable_target(**KEYS, MinCapacity=5)
    with pytest.raises(ClientError) as refused:
        scaling.put_scaling_policy(
            **{**KEYS, "ResourceId": "endpoint/other/variant/AllTraffic"},
            PolicyName="backlog",
            PolicyType="TargetTrackingScaling",
            TargetTrackingScalingPolicyConfiguration=policy,
        )
    assert refused.value.response["Error"]["Code"] == "ObjectNotFoundException"
    scaling.deregister_scalable_target(**KEYS)
    assert scaling.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"] == []
    assert scaling.describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"] == [], "gone with it"
