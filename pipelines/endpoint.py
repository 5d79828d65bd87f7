"""Deploy the newest Approved model package of a group to an asynchronous endpoint.

It creates a Model from the package (its environment names the package, which the container checks every
bundle against), an EndpointConfig with AsyncInferenceConfig (S3 output and failure paths, SNS success and error
topics, invocations per instance) and the Endpoint, or points an existing endpoint at the new configuration.
Names carry the package version and a timestamp so a redeploy never collides.
"""

from __future__ import annotations

import time
from typing import Any

from common import aws
from common.artifacts import PACKAGE_ARN_VARIABLE
from common.model_package import newest_approved
from common.settings import EndpointSettings


class EndpointError(RuntimeError):
    pass


def notification_topics(settings: EndpointSettings) -> tuple[str, str]:
    """The success and error topics: as given, or created (idempotently) next to the endpoint."""
    sns = aws.client("sns")
    success = settings.success_topic_arn or sns.create_topic(Name=f"{settings.endpoint_name}-success")["TopicArn"]
    error = settings.error_topic_arn or sns.create_topic(Name=f"{settings.endpoint_name}-errors")["TopicArn"]
    return success, error


def deploy_endpoint(settings: EndpointSettings, wait_seconds: float = 900.0) -> dict[str, Any]:
    """Deploy (or redeploy) the endpoint; waits up to ``wait_seconds`` for it to be InService."""
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
            raise EndpointError(f"endpoint {endpoint_name} failed: {endpoint.get('FailureReason')}")
        if time.monotonic() > deadline:
            raise EndpointError(f"endpoint {endpoint_name} is still {status} after {timeout:.0f} s")
        time.sleep(poll)
