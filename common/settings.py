"""The product's names and defaults, and the settings each ML-ops part runs with: one place for all of them.

A deployment (``fhe-deploy up``) records its choices as stack outputs; :func:`from_outputs` is the one way to turn
those outputs into the settings of the training pipeline and of the inference endpoint.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from common.bundle.store import RESPONSES_PREFIX
from common.s3uri import S3Uri

DEFAULT_PREFIX = "fhe"  # names a deployment's stacks and resources
PIPELINE_NAME = "fhe-training"
MODEL_PACKAGE_GROUP = "fhe-models"
ENDPOINT_NAME = "fhe-inference"
# FHE is CPU work on every core: compute-optimized instances, for the training and evaluation jobs as for the
# endpoint. Two names, since an operator may size them apart.
JOB_INSTANCE_TYPE = "ml.c7i.4xlarge"
ENDPOINT_INSTANCE_TYPE = "ml.c7i.4xlarge"
INVOCATIONS_PER_INSTANCE = 2  # concurrent shards an endpoint instance takes
# The endpoint scales with its backlog (Application Auto Scaling): to zero when idle, out to MAX_INSTANCES.
MIN_INSTANCES = 0
MAX_INSTANCES = 2
BACKLOG_PER_INSTANCE = 2.0  # target tracking's target for ApproximateBacklogSizePerInstance
SCALE_IN_COOLDOWN_S = 600  # an instance is only taken away after this long without need of it
SCALE_OUT_COOLDOWN_S = 60


class SettingsError(RuntimeError):
    """A deployment whose outputs lack what a part needs."""


@dataclass(frozen=True)
class PipelineSettings:
    """Where the training pipeline runs: account-specific values, not per-execution parameters."""

    role_arn: str
    artifact_bucket: str  # the model bucket: every execution's outputs, under pipelines/<name>/<execution id>/
    data_bucket: str  # training data sets, under datasets/ (read by the training role alone)
    training_image: str
    inference_image: str
    region: str = "us-east-1"
    pipeline_name: str = PIPELINE_NAME
    package_group: str = MODEL_PACKAGE_GROUP  # where Register puts its model packages unless a run says otherwise
    job_instance_type: str = JOB_INSTANCE_TYPE
    default_input_data: str = ""

    @property
    def data_uri(self) -> str:
        return self.default_input_data or f"s3://{self.data_bucket}/datasets/breast_cancer/breast_cancer.csv"


@dataclass(frozen=True)
class EndpointSettings:
    """The asynchronous endpoint that serves the newest Approved package of ``package_group``."""

    package_group: str
    output_bucket: str  # the bundle bucket: the endpoint's responses go under responses/<endpoint>/
    role_arn: str  # the endpoint's execution role
    endpoint_name: str = ENDPOINT_NAME
    instance_type: str = ENDPOINT_INSTANCE_TYPE
    instance_count: int = 1  # at creation; then the scaling policies decide
    max_concurrent_invocations: int = INVOCATIONS_PER_INSTANCE
    min_instances: int = MIN_INSTANCES
    max_instances: int = MAX_INSTANCES
    backlog_per_instance: float = BACKLOG_PER_INSTANCE
    scale_in_cooldown: int = SCALE_IN_COOLDOWN_S
    scale_out_cooldown: int = SCALE_OUT_COOLDOWN_S
    # Retention, applied after each deploy: keep the newest K served versions, retire versions deployed more than
    # D days ago (never the newest, never one with running bundles). 0 turns a rule off.
    keep_versions: int = 0
    retire_after_days: float = 0.0
    success_topic_arn: str | None = None
    error_topic_arn: str | None = None
    # The CloudFormation service role each served version's stack is made with (the deployment's); None: the
    # caller's own permissions.
    stack_role_arn: str | None = None
    # Where a served version's alarm (a backlog no instance serves for long) notifies ML ops; None: no such alarm.
    alarm_topic_arn: str | None = None

    @property
    def output_path(self) -> S3Uri:
        return S3Uri(self.output_bucket, f"{RESPONSES_PREFIX}/{self.endpoint_name}/output")

    @property
    def failure_path(self) -> S3Uri:
        return S3Uri(self.output_bucket, f"{RESPONSES_PREFIX}/{self.endpoint_name}/failures")


@dataclass(frozen=True)
class DeployedSettings:
    pipeline: PipelineSettings
    endpoint: EndpointSettings


# The outputs each part needs, as the stacks name them.
PIPELINE_OUTPUTS = (
    "ModelCreatorRoleArn",
    "ModelBucketName",
    "DataBucketName",
    "TrainingImageUri",
    "InferenceImageUri",
    "PipelineName",
    "ModelPackageGroup",
)
ENDPOINT_OUTPUTS = ("ModelPackageGroup", "BundleBucketName", "EndpointRoleArn", "EndpointName")
# The service role served versions' stacks are made with (infrastructure/product.yaml).
VERSION_STACK_ROLE_OUTPUT = "ServedVersionStackRoleArn"
# The endpoint's scaling a deployment records (its workflow's concurrency follows them): output → field.
SCALING_OUTPUTS = {
    "EndpointMaxInstances": "max_instances",
    "InvocationsPerInstance": "max_concurrent_invocations",
    "ScaleInCooldownSeconds": "scale_in_cooldown",
    "ScaleOutCooldownSeconds": "scale_out_cooldown",
}
# The retention of served versions a deployment records: output → field.
RETENTION_OUTPUTS: dict[str, tuple[str, type[int] | type[float]]] = {
    "KeepVersions": ("keep_versions", int),
    "RetireAfterDays": ("retire_after_days", float),
}


def from_outputs(
    outputs: Mapping[str, str],
    *,
    region: str,
    job_instance_type: str = JOB_INSTANCE_TYPE,
    endpoint_instance_type: str = ENDPOINT_INSTANCE_TYPE,
) -> DeployedSettings:
    """The pipeline's and the endpoint's settings from a deployment's outputs (``common.stack_outputs``)."""
    missing = [name for name in dict.fromkeys(PIPELINE_OUTPUTS + ENDPOINT_OUTPUTS) if not outputs.get(name)]
    if missing:
        raise SettingsError(f"the deployment's outputs lack {', '.join(missing)}; run `fhe-deploy up` again")
    pipeline = PipelineSettings(
        role_arn=outputs["ModelCreatorRoleArn"],
        artifact_bucket=outputs["ModelBucketName"],
        data_bucket=outputs["DataBucketName"],
        training_image=outputs["TrainingImageUri"],
        inference_image=outputs["InferenceImageUri"],
        region=region,
        pipeline_name=outputs["PipelineName"],
        package_group=outputs["ModelPackageGroup"],
        job_instance_type=job_instance_type,
    )
    retention: dict[str, Any] = {
        field: kind(outputs[name]) for name, (field, kind) in RETENTION_OUTPUTS.items() if outputs.get(name)
    }
    endpoint = EndpointSettings(
        package_group=outputs["ModelPackageGroup"],
        output_bucket=outputs["BundleBucketName"],
        role_arn=outputs["EndpointRoleArn"],
        endpoint_name=outputs["EndpointName"],
        instance_type=endpoint_instance_type,
        # A deployment from before these were recorded has the defaults.
        **{field: int(outputs[name]) for name, field in SCALING_OUTPUTS.items() if outputs.get(name)},
        **retention,
        stack_role_arn=outputs.get(VERSION_STACK_ROLE_OUTPUT),
        success_topic_arn=outputs.get("EndpointSuccessTopicArn"),
        error_topic_arn=outputs.get("EndpointErrorTopicArn"),
        alarm_topic_arn=outputs.get("AlarmTopicArn"),
    )
    return DeployedSettings(pipeline, endpoint)
