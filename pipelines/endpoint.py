"""Deploy an Approved model package (the newest of its group unless named) to its own asynchronous endpoint,
``<family>-v<version>``, that scales with its backlog. Every served version keeps its endpoint: deploying a new
version touches no other, so a batch owner's keys for an older version keep working until it is retired.

It creates a Model from the package (its environment names the package, which the container checks every
bundle against), an EndpointConfig with AsyncInferenceConfig (S3 output and failure paths, SNS success and error
topics, invocations per instance) and the Endpoint, or points the version's existing endpoint at the new configuration.
Names carry the package version and a timestamp so a redeploy never collides.

Then its scaling (Application Auto Scaling, as AWS recommends for asynchronous endpoints): a scalable target on
the variant's DesiredInstanceCount from ``min_instances`` (0: no instance while idle) to ``max_instances``;
target tracking on ApproximateBacklogSizePerInstance; and, since target tracking cannot act on a per-instance
metric when there is no instance, a step policy that adds one, fired by a CloudWatch alarm on
HasBacklogWithoutCapacity. :func:`delete_endpoint` takes all of it down again.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from common import aws
from common.artifacts import EVALUATORS_VARIABLE, PACKAGE_ARN_VARIABLE
from common.audit_log import VERSION_SERVED
from common.model_package import (
    ModelPackageError,
    describe,
    newest_approved,
    require_approved,
    served_versions,
    version_endpoint,
)
from common.settings import EndpointSettings
from pipelines.approval import announce

VARIANT = "AllTraffic"
SCALING = {"ServiceNamespace": "sagemaker", "ScalableDimension": "sagemaker:variant:DesiredInstanceCount"}
METRICS_NAMESPACE = "AWS/SageMaker"


class EndpointError(RuntimeError):
    pass


def notification_topics(settings: EndpointSettings) -> tuple[str, str]:
    """The success and error topics: as given, or created (idempotently) next to the endpoint."""
    sns = aws.client("sns")
    success = settings.success_topic_arn or sns.create_topic(Name=f"{settings.endpoint_name}-success")["TopicArn"]
    error = settings.error_topic_arn or sns.create_topic(Name=f"{settings.endpoint_name}-errors")["TopicArn"]
    return success, error


def deploy_endpoint(
    settings: EndpointSettings, wait_seconds: float = 900.0, package_arn: str | None = None
) -> dict[str, Any]:
    """Deploy (or redeploy) the endpoint of ``package_arn``'s version, or of the newest Approved package; waits up
    to ``wait_seconds`` for it to be InService. No other version's endpoint is touched."""
    sagemaker = aws.client("sagemaker")
    if package_arn:
        package = describe(sagemaker, package_arn)
        try:
            require_approved(package)
        except ModelPackageError as error:
            raise EndpointError(str(error)) from None
    else:
        package = newest_approved(sagemaker, settings.package_group)
    package_arn = str(package["ModelPackageArn"])
    version = int(package["ModelPackageVersion"])
    endpoint_name = version_endpoint(settings.endpoint_name, version)
    success_topic, error_topic = notification_topics(settings)
    suffix = f"v{version}-{time.strftime('%Y%m%d%H%M%S')}"
    model_name = f"{settings.endpoint_name}-{suffix}"
    sagemaker.create_model(
        ModelName=model_name,
        ExecutionRoleArn=settings.role_arn,
        PrimaryContainer={
            "ModelPackageName": package_arn,
            # One evaluator process per shard SageMaker sends an instance at once (containers/inference/pool.py).
            "Environment": {
                PACKAGE_ARN_VARIABLE: package_arn,
                EVALUATORS_VARIABLE: str(settings.max_concurrent_invocations),
            },
        },
    )
    config_name = f"{settings.endpoint_name}-{suffix}"
    sagemaker.create_endpoint_config(
        EndpointConfigName=config_name,
        ProductionVariants=[
            {
                "VariantName": VARIANT,
                "ModelName": model_name,
                "InstanceType": settings.instance_type,
                "InitialInstanceCount": settings.instance_count,
            }
        ],
        AsyncInferenceConfig={
            "ClientConfig": {"MaxConcurrentInvocationsPerInstance": settings.max_concurrent_invocations},
            "OutputConfig": {
                "S3OutputPath": str(settings.output_path),
                "S3FailurePath": str(settings.failure_path),
                "NotificationConfig": {"SuccessTopic": success_topic, "ErrorTopic": error_topic},
            },
        },
    )
    try:
        sagemaker.describe_endpoint(EndpointName=endpoint_name)
        exists = True
    except sagemaker.exceptions.ClientError:
        exists = False
    if exists:
        sagemaker.update_endpoint(EndpointName=endpoint_name, EndpointConfigName=config_name)
    else:
        sagemaker.create_endpoint(EndpointName=endpoint_name, EndpointConfigName=config_name)
    status = wait_in_service(sagemaker, endpoint_name, wait_seconds) if wait_seconds > 0 else "Creating"
    scaling = configure_scaling(settings, endpoint_name)
    by = aws.client("sts").get_caller_identity()["Arn"]
    served = {"endpoint": endpoint_name, "version": version, "model_package_arn": package_arn, "by": by}
    announce(VERSION_SERVED, served, package_arn)  # for the audit log
    return {
        "endpoint": endpoint_name,
        "version": version,
        "status": status,
        "served_versions": served_versions(sagemaker, settings.endpoint_name),
        "model_package": package_arn,
        "model": model_name,
        "endpoint_config": config_name,
        "output_path": str(settings.output_path),
        "failure_path": str(settings.failure_path),
        "success_topic": success_topic,
        "error_topic": error_topic,
        "scaling": scaling,
    }


def _resource_id(endpoint_name: str) -> str:
    return f"endpoint/{endpoint_name}/variant/{VARIANT}"


def _alarm_name(endpoint_name: str) -> str:
    return f"{endpoint_name}-backlog-without-capacity"


def configure_scaling(settings: EndpointSettings, endpoint_name: str) -> dict[str, Any]:
    """The scalable target of ``endpoint_name`` (one of ``settings``' family), its two policies and the alarm
    that fires the step policy (idempotent: a redeploy updates them)."""
    if not 0 <= settings.min_instances <= settings.max_instances or settings.max_instances < 1:
        raise EndpointError(
            f"instances must satisfy 0 ≤ minimum ≤ maximum, maximum ≥ 1; got {settings.min_instances} and "
            f"{settings.max_instances}"
        )
    scaling, name = aws.client("application-autoscaling"), endpoint_name
    target = {**SCALING, "ResourceId": _resource_id(name)}
    scaling.register_scalable_target(**target, MinCapacity=settings.min_instances, MaxCapacity=settings.max_instances)
    dimensions = [{"Name": "EndpointName", "Value": name}]
    scaling.put_scaling_policy(
        **target,
        PolicyName=f"{name}-backlog-per-instance",
        PolicyType="TargetTrackingScaling",
        TargetTrackingScalingPolicyConfiguration={
            "TargetValue": settings.backlog_per_instance,
            "CustomizedMetricSpecification": {
                "MetricName": "ApproximateBacklogSizePerInstance",
                "Namespace": METRICS_NAMESPACE,
                "Dimensions": dimensions,
                "Statistic": "Average",
            },
            "ScaleInCooldown": settings.scale_in_cooldown,
            "ScaleOutCooldown": settings.scale_out_cooldown,
        },
    )
    from_zero = scaling.put_scaling_policy(
        **target,
        PolicyName=f"{name}-from-zero",
        PolicyType="StepScaling",
        StepScalingPolicyConfiguration={
            "AdjustmentType": "ChangeInCapacity",
            "MetricAggregationType": "Maximum",
            "Cooldown": settings.scale_out_cooldown,
            "StepAdjustments": [{"MetricIntervalLowerBound": 0.0, "ScalingAdjustment": 1}],
        },
    )["PolicyARN"]
    aws.client("cloudwatch").put_metric_alarm(
        AlarmName=_alarm_name(name),
        AlarmDescription=f"{name} has requests waiting and no instance: start one",
        Namespace=METRICS_NAMESPACE,
        MetricName="HasBacklogWithoutCapacity",
        Dimensions=dimensions,
        Statistic="Maximum",
        Period=60,
        EvaluationPeriods=1,
        Threshold=1.0,
        ComparisonOperator="GreaterThanOrEqualToThreshold",
        TreatMissingData="missing",
        AlarmActions=[from_zero],
    )
    return {
        "min_instances": settings.min_instances,
        "max_instances": settings.max_instances,
        "backlog_per_instance": settings.backlog_per_instance,
        "scale_in_cooldown": settings.scale_in_cooldown,
        "scale_out_cooldown": settings.scale_out_cooldown,
    }


def family_endpoints(family: str) -> list[str]:
    """Every endpoint of ``family``, in whatever state, every one whose scaling outlived it, and the single
    endpoint named ``family`` itself that deployments made before versions had their own endpoints (teardown)."""
    sagemaker = aws.client("sagemaker")
    names = set(served_versions(sagemaker, family, serving_only=False).values())
    with contextlib.suppress(sagemaker.exceptions.ClientError):  # "Could not find endpoint": none from before
        names.add(str(sagemaker.describe_endpoint(EndpointName=family)["EndpointName"]))
    pages = aws.client("application-autoscaling").get_paginator("describe_scalable_targets")
    prefix = f"endpoint/{family}-v"
    for page in pages.paginate(ServiceNamespace=SCALING["ServiceNamespace"]):
        for target in page.get("ScalableTargets", []):
            if target["ResourceId"].startswith(prefix):
                names.add(target["ResourceId"].split("/")[1])
    return sorted(names)


def delete_endpoint(endpoint_name: str) -> bool:
    """The endpoint's scaling (target, policies, alarm), then the endpoint; False when there was no endpoint."""
    scaling, resource = aws.client("application-autoscaling"), _resource_id(endpoint_name)
    # Deregistering deletes the target's policies on AWS; deleted first all the same, so no backend keeps any.
    policies = scaling.describe_scaling_policies(ServiceNamespace=SCALING["ServiceNamespace"], ResourceId=resource)
    for policy in policies["ScalingPolicies"]:
        scaling.delete_scaling_policy(**SCALING, ResourceId=resource, PolicyName=policy["PolicyName"])
    with contextlib.suppress(scaling.exceptions.ObjectNotFoundException):  # never scaled, or deregistered already
        scaling.deregister_scalable_target(**SCALING, ResourceId=resource)
    aws.client("cloudwatch").delete_alarms(AlarmNames=[_alarm_name(endpoint_name)])
    sagemaker = aws.client("sagemaker")
    try:
        sagemaker.delete_endpoint(EndpointName=endpoint_name)
    except sagemaker.exceptions.ClientError as error:
        if "Could not find" in str(error) or "does not exist" in str(error):
            return False
        raise
    return True


def wait_in_service(sagemaker: Any, endpoint_name: str, timeout: float, poll: float = 2.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        endpoint = sagemaker.describe_endpoint(EndpointName=endpoint_name)
        status = str(endpoint["EndpointStatus"])
        if status == "InService":
            return status
        if status == "Failed":
            raise EndpointError(f"endpoint {endpoint_name} failed: {endpoint.get('FailureReason')}")
        if time.monotonic() > deadline:
            raise EndpointError(f"endpoint {endpoint_name} is still {status} after {timeout:.0f} s")
        time.sleep(poll)
