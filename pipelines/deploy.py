"""ML ops after training: approve or reject a model package, deploy the newest approved one to an
asynchronous endpoint.

``deploy`` creates a Model from the package (its environment names the package, which the container checks
every bundle against), an EndpointConfig with AsyncInferenceConfig (S3 output and failure paths, SNS success
and error topics, invocations per instance) and the Endpoint, or points an existing endpoint at the new
configuration. Names carry the package version and a timestamp so a redeploy never collides.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from common import aws
from common.artifacts import PACKAGE_ARN_VARIABLE
from common.audit_log import APPROVAL_DECISION, APPROVAL_FIELDS, REGISTRY_EVENT_SOURCE
from common.bundle_store import RESPONSES_PREFIX
from common.model_package import describe, newest_approved
from common.s3uri import S3Uri

ENDPOINT_NAME = "fhe-inference"
DECISIONS = ("Approved", "Rejected")


class DeploymentError(RuntimeError):
    pass


def approve(package_arn: str | None, group: str, decision: str, note: str) -> dict[str, Any]:
    """Set the approval of ``package_arn`` (default: the newest package of ``group`` pending approval)."""
    if decision not in DECISIONS:
        raise DeploymentError(f"the decision must be one of {', '.join(DECISIONS)}, not {decision!r}")
    sagemaker = aws.client("sagemaker")
    if package_arn is None:
        pending = sagemaker.list_model_packages(
            ModelPackageGroupName=group, ModelApprovalStatus="PendingManualApproval", SortOrder="Descending"
        )["ModelPackageSummaryList"]
        if not pending:
            raise DeploymentError(f"model package group {group!r} has no package pending approval")
        package_arn = max(pending, key=lambda s: int(s["ModelPackageVersion"]))["ModelPackageArn"]
    sagemaker.update_model_package(ModelPackageArn=package_arn, ModelApprovalStatus=decision, ApprovalDescription=note)
    package = describe(sagemaker, package_arn)
    publish_decision(package)
    return {"arn": package_arn, "status": package["ModelApprovalStatus"], "note": package.get("ApprovalDescription")}


def publish_decision(package: dict[str, Any]) -> None:
    """Announce an approval decision on the default event bus, where the audit log records it with who made it.

    On AWS SageMaker also sends its own state change event for every decision, including those made elsewhere
    (the console); this one adds the decider's identity as STS reports it.
    """
    detail = {k: package[k] for k in APPROVAL_FIELDS if k in package}
    detail["decided_by"] = aws.client("sts").get_caller_identity()["Arn"]
    response = aws.client("events").put_events(
        Entries=[
            {
                "Source": REGISTRY_EVENT_SOURCE,
                "DetailType": APPROVAL_DECISION,
                "Detail": json.dumps(detail, default=str, sort_keys=True),
                "Resources": [package["ModelPackageArn"]],
            }
        ]
    )
    if response.get("FailedEntryCount"):
        raise DeploymentError(f"the approval was set but its event was refused: {response['Entries']}")


@dataclass(frozen=True)
class DeploySettings:
    package_group: str
    output_bucket: str  # the bundle bucket: the endpoint's responses go under responses/<endpoint>/
    role_arn: str  # the endpoint's role
    endpoint_name: str = ENDPOINT_NAME
    instance_type: str = "ml.c6i.4xlarge"  # FHE is CPU work: compute-optimized, many cores
    instance_count: int = 1
    max_concurrent_invocations: int = 2
    success_topic_arn: str | None = None
    error_topic_arn: str | None = None

    @property
    def output_path(self) -> S3Uri:
        return S3Uri(self.output_bucket, f"{RESPONSES_PREFIX}/{self.endpoint_name}/output")

    @property
    def failure_path(self) -> S3Uri:
        return S3Uri(self.output_bucket, f"{RESPONSES_PREFIX}/{self.endpoint_name}/failures")


def notification_topics(settings: DeploySettings) -> tuple[str, str]:
    """The success and error topics: as given, or created (idempotently) next to the endpoint."""
    sns = aws.client("sns")
    success = settings.success_topic_arn or sns.create_topic(Name=f"{settings.endpoint_name}-success")["TopicArn"]
    error = settings.error_topic_arn or sns.create_topic(Name=f"{settings.endpoint_name}-errors")["TopicArn"]
    return success, error


def deploy(settings: DeploySettings, wait_seconds: float = 900.0) -> dict[str, Any]:
    sagemaker = aws.client("sagemaker")
    package = newest_approved(sagemaker, settings.package_group)
    package_arn = package["ModelPackageArn"]
    success_topic, error_topic = notification_topics(settings)
    suffix = f"v{package['ModelPackageVersion']}-{time.strftime('%Y%m%d%H%M%S')}"
    model_name = f"{settings.endpoint_name}-{suffix}"
    sagemaker.create_model(
        ModelName=model_name,
        ExecutionRoleArn=settings.role_arn,
        PrimaryContainer={"ModelPackageName": package_arn, "Environment": {PACKAGE_ARN_VARIABLE: package_arn}},
    )
    config_name = f"{settings.endpoint_name}-{suffix}"
    sagemaker.create_endpoint_config(
        EndpointConfigName=config_name,
        ProductionVariants=[
            {
                "VariantName": "AllTraffic",
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
        sagemaker.describe_endpoint(EndpointName=settings.endpoint_name)
        exists = True
    except sagemaker.exceptions.ClientError:
        exists = False
    if exists:
        sagemaker.update_endpoint(EndpointName=settings.endpoint_name, EndpointConfigName=config_name)
    else:
        sagemaker.create_endpoint(EndpointName=settings.endpoint_name, EndpointConfigName=config_name)
    status = wait_in_service(sagemaker, settings.endpoint_name, wait_seconds) if wait_seconds > 0 else "Creating"
    return {
        "endpoint": settings.endpoint_name,
        "status": status,
        "model_package": package_arn,
        "model": model_name,
        "endpoint_config": config_name,
        "output_path": str(settings.output_path),
        "failure_path": str(settings.failure_path),
        "success_topic": success_topic,
        "error_topic": error_topic,
    }


def wait_in_service(sagemaker: Any, endpoint_name: str, timeout: float, poll: float = 2.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        endpoint = sagemaker.describe_endpoint(EndpointName=endpoint_name)
        status = str(endpoint["EndpointStatus"])
        if status == "InService":
            return status
        if status == "Failed":
            raise DeploymentError(f"endpoint {endpoint_name} failed: {endpoint.get('FailureReason')}")
        if time.monotonic() > deadline:
            raise DeploymentError(f"endpoint {endpoint_name} is still {status} after {timeout:.0f} s")
        time.sleep(poll)
