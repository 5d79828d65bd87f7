"""Deploy an Approved model package (the newest of its group unless named) as its own served version: a
CloudFormation stack, ``<family>-v<version>``, whose asynchronous endpoint of the same name scales with its
backlog. Every served version keeps its stack: deploying a new version touches no other, so a batch owner's keys
for an older version keep working until it is retired (pipelines/retirement.py deletes the stack).

The stack (infrastructure/served_version.yaml) holds the Model made from the package (its environment names the
package, which the container checks every bundle against), the EndpointConfig with AsyncInferenceConfig (S3
output and failure paths, SNS success and error topics, invocations per instance), the Endpoint, and its scaling
(Application Auto Scaling, as AWS recommends for asynchronous endpoints): a scalable target on the variant's
DesiredInstanceCount from ``min_instances`` (0: no instance while idle) to ``max_instances``; target tracking on
ApproximateBacklogSizePerInstance; and, since target tracking cannot act on a per-instance metric when there is
no instance, a step policy that adds one, fired by a CloudWatch alarm on HasBacklogWithoutCapacity.

Redeploying a version updates its stack: new settings give a new Model and EndpointConfig (named by a digest of
those settings), the endpoint is updated in place to them, and CloudFormation deletes the old ones; the same
settings again change nothing. The stack is created under the deployment's CloudFormation service role, which
alone holds the rights to make these resources.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import aws, stacks
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
from common.stack_outputs import describe_stack
from pipelines.approval import announce

SERVED_VERSION_TEMPLATE = Path(__file__).resolve().parents[1] / "infrastructure" / "served_version.yaml"
STACK_TIMEOUT_S = 1800.0  # a stack's deletion waits for its endpoint's
# The tags every served version's stack carries: teardown finds a deployment's versions by the family tag.
FAMILY_TAG = "fhe:endpoint-family"
VERSION_TAG = "fhe:model-version"
PACKAGE_TAG = "fhe:model-package-arn"
# The parameters that make the Model and the EndpointConfig: their digest names both (the stack's Revision).
_REVISED_BY = (
    "ModelPackageArn",
    "ExecutionRoleArn",
    "InstanceType",
    "InitialInstanceCount",
    "InvocationsPerInstance",
    "OutputPath",
    "FailurePath",
    "SuccessTopicArn",
    "ErrorTopicArn",
)


class EndpointError(RuntimeError):
    pass


def version_stack(family: str, version: int) -> str:
    """The stack of model version ``version`` of endpoint ``family``: named as the endpoint it holds."""
    return version_endpoint(family, version)


def version_stacks(family: str) -> list[str]:
    """Every served version's stack of endpoint ``family``, in whatever state (teardown)."""
    return stacks.tagged(FAMILY_TAG, family)


def notification_topics(settings: EndpointSettings) -> tuple[str, str]:
    """The success and error topics: as given, or created (idempotently) next to the endpoint."""
    sns = aws.client("sns")
    success = settings.success_topic_arn or sns.create_topic(Name=f"{settings.endpoint_name}-success")["TopicArn"]
    error = settings.error_topic_arn or sns.create_topic(Name=f"{settings.endpoint_name}-errors")["TopicArn"]
    return success, error


def check_scaling_limits(settings: EndpointSettings) -> None:
    if not 0 <= settings.min_instances <= settings.max_instances or settings.max_instances < 1:
        raise EndpointError(
            f"instances must satisfy 0 ≤ minimum ≤ maximum, maximum ≥ 1; got {settings.min_instances} and "
            f"{settings.max_instances}"
        )


def stack_parameters(
    settings: EndpointSettings, package_arn: str, version: int, topics: tuple[str, str]
) -> dict[str, str]:
    """The served version stack's parameters (infrastructure/served_version.yaml) for ``package_arn``."""
    parameters = {
        "EndpointName": version_endpoint(settings.endpoint_name, version),
        "ModelPackageArn": package_arn,
        "ExecutionRoleArn": settings.role_arn,
        "InstanceType": settings.instance_type,
        "InitialInstanceCount": str(settings.instance_count),
        "InvocationsPerInstance": str(settings.max_concurrent_invocations),
        "OutputPath": str(settings.output_path),
        "FailurePath": str(settings.failure_path),
        "SuccessTopicArn": topics[0],
        "ErrorTopicArn": topics[1],
        "MinInstances": str(settings.min_instances),
        "MaxInstances": str(settings.max_instances),
        "BacklogPerInstance": str(settings.backlog_per_instance),
        "ScaleInCooldown": str(settings.scale_in_cooldown),
        "ScaleOutCooldown": str(settings.scale_out_cooldown),
        "AlarmTopicArn": settings.alarm_topic_arn or "",
    }
    revised = json.dumps({name: parameters[name] for name in _REVISED_BY}, sort_keys=True)
    return {**parameters, "Revision": hashlib.sha256(revised.encode()).hexdigest()[:12]}


def _quiet(line: str) -> None:
    del line


def deploy_endpoint(
    settings: EndpointSettings,
    wait_seconds: float = 900.0,
    package_arn: str | None = None,
    report: Callable[[str], None] = _quiet,
) -> dict[str, Any]:
    """Deploy (or redeploy) the stack of ``package_arn``'s version, or of the newest Approved package; waits up
    to ``wait_seconds`` for it (and so its endpoint, InService) to settle, reporting its progress. No other
    version's stack is touched."""
    check_scaling_limits(settings)
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
    stack = version_stack(settings.endpoint_name, version)
    if describe_stack(stack) is None and version in served_versions(
        sagemaker, settings.endpoint_name, serving_only=False
    ):
        raise EndpointError(
            f"endpoint {version_endpoint(settings.endpoint_name, version)} exists outside a stack (an earlier release "
            "made it): delete it and its scaling, then deploy the version again"
        )
    topics = notification_topics(settings)
    parameters = stack_parameters(settings, package_arn, version, topics)
    tags = {FAMILY_TAG: settings.endpoint_name, VERSION_TAG: str(version), PACKAGE_TAG: package_arn}
    try:
        outputs = stacks.apply(
            stack,
            SERVED_VERSION_TEMPLATE.read_text(),
            parameters,
            timeout=wait_seconds,
            report=report,
            role_arn=settings.stack_role_arn,
            tags=tags,
        )
    except stacks.StackError as error:
        raise EndpointError(f"version {version} was not deployed: {error}") from None
    endpoint_name = outputs["EndpointName"]
    status = str(sagemaker.describe_endpoint(EndpointName=endpoint_name)["EndpointStatus"])
    by = aws.client("sts").get_caller_identity()["Arn"]
    served = {"endpoint": endpoint_name, "version": version, "model_package_arn": package_arn, "by": by}
    announce(VERSION_SERVED, served, package_arn)  # for the audit log
    return {
        "endpoint": endpoint_name,
        "version": version,
        "stack": stack,
        "status": status,
        "served_versions": served_versions(sagemaker, settings.endpoint_name),
        "model_package": package_arn,
        "model": outputs["ModelName"],
        "endpoint_config": outputs["EndpointConfigName"],
        "output_path": parameters["OutputPath"],
        "failure_path": parameters["FailurePath"],
        "success_topic": topics[0],
        "error_topic": topics[1],
        "scaling": {
            "min_instances": settings.min_instances,
            "max_instances": settings.max_instances,
            "backlog_per_instance": settings.backlog_per_instance,
            "scale_in_cooldown": settings.scale_in_cooldown,
            "scale_out_cooldown": settings.scale_out_cooldown,
        },
    }


def delete_version_stack(family: str, version: int, *, report: Callable[[str], None] = _quiet) -> bool:
    """Delete version ``version``'s stack: its alarm, policies and scalable target, then its endpoint, endpoint
    configuration and model (CloudFormation deletes in that order). False when there was no stack."""
    return delete_stack(version_stack(family, version), report=report)


def delete_stack(stack: str, *, report: Callable[[str], None] = _quiet) -> bool:
    """Delete a served version's stack by name (teardown), waiting for its resources to go; CloudFormation acts
    with the service role the stack was made with."""
    try:
        return stacks.delete(stack, timeout=STACK_TIMEOUT_S, report=report)
    except stacks.StackError as error:
        raise EndpointError(str(error)) from None
