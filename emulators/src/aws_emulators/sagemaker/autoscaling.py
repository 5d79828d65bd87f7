"""Application Auto Scaling for the local SageMaker's endpoints: the API calls a deployment makes (scalable targets,
scaling policies, scaling activities, over the store) and the decision each scaling round takes from them.

On AWS, Application Auto Scaling acts on CloudWatch alarms: target tracking creates its own alarms on
``ApproximateBacklogSizePerInstance``, and a step policy acts when the alarm it is an action of fires (a deployment
wires it to ``HasBacklogWithoutCapacity``). Here the endpoints' scaling round plays both parts: it publishes those
metrics to CloudWatch as SageMaker does, and :func:`decide` applies the policies to the backlog it measures
directly; a step policy counts only when a CloudWatch alarm on ``HasBacklogWithoutCapacity`` names it as an action
(what a deployment must have wired on AWS)."""

from __future__ import annotations

import math
import re
import uuid
from dataclasses import dataclass
from typing import Any

from aws_emulators.sagemaker.backend import Backend, timestamp
from aws_emulators.sagemaker.errors import ApiError, ValidationError, required

NAMESPACE = "sagemaker"
DIMENSION = "sagemaker:variant:DesiredInstanceCount"
_RESOURCE = re.compile(r"^endpoint/(?P<endpoint>[^/]+)/variant/(?P<variant>[^/]+)$")
BACKLOG_METRIC = "ApproximateBacklogSizePerInstance"
NO_CAPACITY_METRIC = "HasBacklogWithoutCapacity"


class ObjectNotFound(ApiError):
    code = "ObjectNotFoundException"


def resource_id(endpoint: str, variant: str = "AllTraffic") -> str:
    return f"endpoint/{endpoint}/variant/{variant}"


def endpoint_of(resource: str) -> str:
    match = _RESOURCE.match(resource)
    if not match:
        raise ValidationError(f"ResourceId {resource!r} is not endpoint/<name>/variant/<variant>")
    return match["endpoint"]


def _target_key(body: dict[str, Any]) -> str:
    if required(body, "ServiceNamespace") != NAMESPACE:
        raise ValidationError(f"the local SageMaker scales the {NAMESPACE} namespace only")
    if required(body, "ScalableDimension") != DIMENSION:
        raise ValidationError(f"the local SageMaker scales {DIMENSION} only")
    resource = required(body, "ResourceId")
    endpoint_of(resource)
    return resource


def _capacity(body: dict[str, Any], name: str, default: int | None) -> int | None:
    value = body.get(name, default)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValidationError(f"{name} must be a non-negative integer, not {value!r}")
    return value


class Autoscaling:
    """The API, over the store: kinds ``scalable-target``, ``scaling-policy`` and ``scaling-activity``."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.account = backend.arn_prefix.rsplit(":", 1)[-1]

    def register_scalable_target(self, body: dict[str, Any]) -> dict[str, Any]:
        resource = _target_key(body)
        existing = self.backend.store.get("scalable-target", resource)
        minimum = _capacity(body, "MinCapacity", existing["MinCapacity"] if existing else None)
        maximum = _capacity(body, "MaxCapacity", existing["MaxCapacity"] if existing else None)
        if minimum is None or maximum is None:
            raise ValidationError("MinCapacity and MaxCapacity are required to register a new scalable target")
        if minimum > maximum:
            raise ValidationError(f"MinCapacity {minimum} is more than MaxCapacity {maximum}")
        arn = (
            existing["ScalableTargetARN"]
            if existing
            else f"arn:aws:application-autoscaling:{self.backend.region}:{self.account}:scalable-target/"
            f"{uuid.uuid4().hex[:28]}"
        )
        target = {
            "ServiceNamespace": NAMESPACE,
            "ResourceId": resource,
            "ScalableDimension": DIMENSION,
            "MinCapacity": minimum,
            "MaxCapacity": maximum,
            "RoleARN": body.get("RoleARN")
            or f"arn:aws:iam::{self.account}:role/aws-service-role/sagemaker.application-autoscaling.amazonaws.com/"
            "AWSServiceRoleForApplicationAutoScaling_SageMakerEndpoint",
            "CreationTime": existing["CreationTime"] if existing else timestamp(),
            "SuspendedState": {"DynamicScalingInSuspended": False, "DynamicScalingOutSuspended": False},
            "ScalableTargetARN": arn,
        }
        self.backend.store.put("scalable-target", resource, target)
        return {"ScalableTargetARN": arn}

    def describe_scalable_targets(self, body: dict[str, Any]) -> dict[str, Any]:
        wanted = body.get("ResourceIds") or []
        targets = [t for t in self.backend.store.list("scalable-target") if not wanted or t["ResourceId"] in wanted]
        return {"ScalableTargets": targets}

    def deregister_scalable_target(self, body: dict[str, Any]) -> dict[str, Any]:
        resource = _target_key(body)
        if self.backend.store.get("scalable-target", resource) is None:
            raise ObjectNotFound(
                f"No scalable target registered for service namespace: {NAMESPACE}, resource ID: "
                f"{resource}, scalable dimension: {DIMENSION}"
            )
        for policy in self.policies(resource):
            self.backend.store.delete("scaling-policy", policy["PolicyARN"])
        self.backend.store.delete("scalable-target", resource)
        return {}

    def put_scaling_policy(self, body: dict[str, Any]) -> dict[str, Any]:
        resource = _target_key(body)
        name = required(body, "PolicyName")
        if self.backend.store.get("scalable-target", resource) is None:
            raise ObjectNotFound(
                f"No scalable target registered for service namespace: {NAMESPACE}, resource ID: "
                f"{resource}, scalable dimension: {DIMENSION}"
            )
        kind = body.get("PolicyType", "StepScaling")
        if kind == "TargetTrackingScaling":
            config = body.get("TargetTrackingScalingPolicyConfiguration") or {}
            if not isinstance(config.get("TargetValue"), int | float) or config["TargetValue"] <= 0:
                raise ValidationError("TargetTrackingScalingPolicyConfiguration needs a positive TargetValue")
        elif kind == "StepScaling":
            config = body.get("StepScalingPolicyConfiguration") or {}
            if not config.get("StepAdjustments"):
                raise ValidationError("StepScalingPolicyConfiguration needs StepAdjustments")
        else:
            raise ValidationError(f"the local SageMaker does not implement {kind} policies")
        target_id = uuid.uuid5(uuid.NAMESPACE_URL, resource)
        arn = (
            f"arn:aws:autoscaling:{self.backend.region}:{self.account}:scalingPolicy:{target_id}"
            f":resource/{NAMESPACE}/{resource}:policyName/{name}"
        )
        policy = {
            "PolicyARN": arn,
            "PolicyName": name,
            "ServiceNamespace": NAMESPACE,
            "ResourceId": resource,
            "ScalableDimension": DIMENSION,
            "PolicyType": kind,
            "Alarms": [],
            "CreationTime": timestamp(),
        }
        policy[
            "TargetTrackingScalingPolicyConfiguration"
            if kind == "TargetTrackingScaling"
            else "StepScalingPolicyConfiguration"
        ] = config
        self.backend.store.put("scaling-policy", arn, policy, parent=resource)
        return {"PolicyARN": arn, "Alarms": []}

    def describe_scaling_policies(self, body: dict[str, Any]) -> dict[str, Any]:
        resource = body.get("ResourceId")
        names = body.get("PolicyNames") or []
        policies = (
            self.backend.store.list("scaling-policy", parent=resource)
            if resource
            else self.backend.store.list("scaling-policy")
        )
        return {"ScalingPolicies": [p for p in policies if not names or p["PolicyName"] in names]}

    def delete_scaling_policy(self, body: dict[str, Any]) -> dict[str, Any]:
        resource = _target_key(body)
        name = required(body, "PolicyName")
        for policy in self.policies(resource):
            if policy["PolicyName"] == name:
                self.backend.store.delete("scaling-policy", policy["PolicyARN"])
                return {}
        raise ObjectNotFound(
            f"No scaling policy found for service namespace: {NAMESPACE}, resource ID: {resource}, "
            f"scalable dimension: {DIMENSION}, policy name: {name}"
        )

    def describe_scaling_activities(self, body: dict[str, Any]) -> dict[str, Any]:
        resource = body.get("ResourceId")
        activities = (
            self.backend.store.list("scaling-activity", parent=resource)
            if resource
            else self.backend.store.list("scaling-activity")
        )
        return {"ScalingActivities": sorted(activities, key=lambda a: a["StartTime"], reverse=True)}

    # ---------------------------------------------------------------- what a scaling round reads and writes

    def target(self, endpoint: str) -> dict[str, Any] | None:
        return self.backend.store.get("scalable-target", resource_id(endpoint))

    def policies(self, resource: str) -> list[dict[str, Any]]:
        return self.backend.store.list("scaling-policy", parent=resource)

    def record(self, endpoint: str, before: int, after: int, cause: str) -> None:
        now = timestamp()
        activity: dict[str, Any] = {
            "ActivityId": str(uuid.uuid4()),
            "ServiceNamespace": NAMESPACE,
            "ResourceId": resource_id(endpoint),
            "ScalableDimension": DIMENSION,
            "Description": f"Setting desired instance count to {after}.",
            "Cause": cause,
            "StartTime": now,
            "EndTime": now,
            "StatusCode": "Successful",
            "StatusMessage": f"Successfully set desired instance count to {after}. Change successfully fulfilled "
            f"by sagemaker (from {before}).",
        }
        self.backend.store.put("scaling-activity", activity["ActivityId"], activity, parent=activity["ResourceId"])


@dataclass
class ScalingState:
    """What one endpoint's scaling rounds remember between them."""

    desired: int
    last_scale_out: float = 0.0
    last_needed: float = 0.0  # the last time the backlog needed every instance the endpoint has


def decide(
    state: ScalingState,
    target: dict[str, Any],
    policies: list[dict[str, Any]],
    wired_step_policies: set[str],
    backlog: int,
    now: float,
) -> tuple[int, str]:
    """The desired instance count after one round, and why (empty when unchanged)."""
    desired, minimum, maximum = state.desired, int(target["MinCapacity"]), int(target["MaxCapacity"])

    def clamp(count: int) -> int:
        return max(minimum, min(maximum, count))

    if desired != clamp(desired):
        return clamp(desired), f"the desired count {desired} is outside [{minimum}, {maximum}]"
    if desired == 0:
        for policy in policies:
            if policy["PolicyType"] != "StepScaling" or policy["PolicyARN"] not in wired_step_policies:
                continue
            config = policy["StepScalingPolicyConfiguration"]
            if backlog > 0 and now - state.last_scale_out >= float(config.get("Cooldown", 0)):
                step = int(config["StepAdjustments"][0]["ScalingAdjustment"])
                after = clamp(desired + step if config.get("AdjustmentType") == "ChangeInCapacity" else step)
                if after != desired:
                    return (
                        after,
                        f"monitor alarm on {NO_CAPACITY_METRIC} in state ALARM triggered policy {policy['PolicyName']}",
                    )
        return desired, ""
    for policy in policies:
        if policy["PolicyType"] != "TargetTrackingScaling":
            continue
        config = policy["TargetTrackingScalingPolicyConfiguration"]
        wanted = clamp(math.ceil(backlog / float(config["TargetValue"])))
        if wanted >= desired:
            state.last_needed = now
        if wanted > desired and now - state.last_scale_out >= float(config.get("ScaleOutCooldown", 0)):
            return wanted, f"target tracking {policy['PolicyName']}: backlog {backlog} over {desired} instance(s)"
        quiet = now - max(state.last_needed, state.last_scale_out)
        if wanted < desired and quiet >= float(config.get("ScaleInCooldown", 0)):
            return wanted, f"target tracking {policy['PolicyName']}: backlog {backlog} for {quiet:.0f} s"
    return desired, ""
