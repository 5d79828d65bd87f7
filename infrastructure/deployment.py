"""One deployment of the whole product in one AWS account, or on the local stack; only the endpoint URLs and the
credentials differ. ``fhe-deploy`` (infrastructure/cli.py) is its command line.

``up`` runs, in order: the bootstrap stack (infrastructure/bootstrap.yaml: the KMS key, the artifact bucket, the
image repositories) → the data stack (infrastructure/data.yaml: the data, model and bundle buckets, the audit log)
→ the images (with --build-images) → the functions, layer and state machine definition staged in the artifact
bucket → the product stack (infrastructure/product.yaml and its concerns in infrastructure/product/: messaging,
functions, workflow, audit, retraining, the SageMaker roles; assembled into one template) → the SageMaker pipeline
upserted with the model creator's role. Every step is idempotent: run it again after a change.
``--dry-run`` prints every resource it would create, the uploads, the image builds and the pipeline, and changes
nothing.

With ``enclave`` (``fhe-deploy up --enclave-image …``), ``up`` also deploys the enclave path after the data stack
(infrastructure/enclave.yaml: the key released to the image's measurement, the shard queue, the fleet; see
infrastructure/enclave_fleet.py) and gives the product stack its key and queue.

``down`` deletes every served model version's stack (each version's endpoint and scaling, found by the stacks'
tag naming the deployment's endpoint family), the pipeline, the batch owners' roles (``fhe-deploy owner add``) and
the product stack; the bootstrap and data stacks (the key, the
buckets, the audit log) stay, so a later ``up`` finds everything again. ``down --delete-data`` removes them too,
contents included, and schedules the key's deletion.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from common import aws, stacks
from common.settings import (
    DEFAULT_PREFIX,
    ENDPOINT_NAME,
    INVOCATIONS_PER_INSTANCE,
    JOB_INSTANCE_TYPE,
    MAX_INSTANCES,
    MODEL_PACKAGE_GROUP,
    PIPELINE_NAME,
    SCALE_IN_COOLDOWN_S,
    SCALE_OUT_COOLDOWN_S,
    from_outputs,
)
from common.stack_outputs import StackNames, describe_stack, image_output, read_outputs, stack_outputs
from infrastructure import images, owners, package
from infrastructure.enclave_fleet import EnclaveFleet, staged_wheel
from infrastructure.templates import BOOTSTRAP, DATA, ENCLAVE, PRODUCT, body, resources
from pipelines import runs
from pipelines.endpoint import delete_stack, version_stacks

STACK_TIMEOUT_S = 1200.0
DATA_OUTPUTS = ("DataBucketName", "ModelBucketName", "BundleBucketName", "AuditTableName")
Report = Callable[[str], None]
# The SQS event sources' MaximumConcurrency (infrastructure/product/): the least SQS allows. A function reserved
# below it would have the queue's messages throttled into the dead-letter queue.
MIN_FUNCTION_CONCURRENCY = 2


@dataclass(frozen=True)
class Deployment:
    """One deployment of the product: its names and the choices an operator makes."""

    prefix: str = DEFAULT_PREFIX
    endpoint_name: str = ENDPOINT_NAME
    pipeline_name: str = PIPELINE_NAME
    package_group: str = MODEL_PACKAGE_GROUP
    retraining_schedule: str = "rate(7 days)"
    retraining_enabled: bool = True
    function_concurrency: int = 4
    bundle_retention_days: int = 30
    quarantine_retention_days: int = 90
    log_level: str = "INFO"
    image_tag: str = ""  # empty: each image's content tag (infrastructure/images.py)
    build_images: bool = False
    image_engine: str = "auto"  # docker, podman, or the first that works
    base_image: str = ""  # empty: the Dockerfiles' default, the official Python image
    push_images: bool = True
    job_instance_type: str = JOB_INSTANCE_TYPE
    # The endpoint's scaling, recorded for `fhe-pipeline deploy`; the workflow sends as many shards at once as
    # the endpoint takes at its largest (max_instances times invocations_per_instance).
    max_instances: int = MAX_INSTANCES
    invocations_per_instance: int = INVOCATIONS_PER_INSTANCE
    scale_in_cooldown: int = SCALE_IN_COOLDOWN_S
    scale_out_cooldown: int = SCALE_OUT_COOLDOWN_S
    # Served model versions kept after each `fhe-pipeline deploy`: the newest K, those deployed in the last D days
    # (0: no such rule).
    keep_versions: int = 0
    retire_after_days: float = 0.0
    # Quarantined bundles in an hour that put the quarantine alarm in ALARM (infrastructure/product/monitoring.yaml).
    quarantine_alarm_per_hour: int = 5
    # The enclave path (infrastructure/enclave_fleet.py); None: FHE only, and Validate refuses enclave bundles.
    enclave: EnclaveFleet | None = None

    def __post_init__(self) -> None:
        if self.function_concurrency < MIN_FUNCTION_CONCURRENCY:
            raise ValueError(
                f"function concurrency {self.function_concurrency} is below {MIN_FUNCTION_CONCURRENCY}, the least "
                "concurrency of an SQS event source: messages would be throttled into the dead-letter queues"
            )

    @property
    def map_concurrency(self) -> int:
        """Shards the endpoint takes at once at its largest: what the workflow's Map sends at a time."""
        return self.max_instances * self.invocations_per_instance

    def uploads(self) -> list[package.Upload]:
        enclave_concurrency = self.enclave.map_concurrency if self.enclave else None
        return package.uploads(map_concurrency=self.map_concurrency, enclave_concurrency=enclave_concurrency)

    @property
    def stacks(self) -> StackNames:
        return StackNames(self.prefix)

    @property
    def bootstrap_stack(self) -> str:
        return self.stacks.bootstrap

    @property
    def data_stack(self) -> str:
        return self.stacks.data

    @property
    def product_stack(self) -> str:
        return self.stacks.product

    @property
    def enclave_stack(self) -> str:
        return self.stacks.enclave

    def images(self, repositories: dict[str, str]) -> list[images.Image]:
        """The deployment's two images in the repositories the bootstrap stack names: ``--image-tag`` if given,
        else each image's content tag here. (The tags a deployment was made with: ``common.stack_outputs``.)"""
        return images.images(repositories, self.image_tag, self.base_image)

    def bootstrap_parameters(self) -> dict[str, str]:
        return {"Prefix": self.prefix}

    def data_parameters(self, bootstrap: dict[str, str]) -> dict[str, str]:
        return {
            "Prefix": self.prefix,
            "KeyArn": bootstrap["KeyArn"],
            "BundleRetentionDays": str(self.bundle_retention_days),
            "QuarantineRetentionDays": str(self.quarantine_retention_days),
        }

    def enclave_parameters(
        self, bootstrap: dict[str, str], data: dict[str, str], measurement: str, wheel_key: str
    ) -> dict[str, str]:
        assert self.enclave is not None
        return self.enclave.parameters(
            self.prefix,
            measurement,
            wheel_key,
            bundle_bucket=data["BundleBucketName"],
            artifact_bucket=bootstrap["ArtifactBucketName"],
            model_bucket=data["ModelBucketName"],
            package_group=self.package_group,
            key_arn=bootstrap["KeyArn"],
        )

    def product_parameters(
        self,
        bootstrap: dict[str, str],
        data: dict[str, str],
        staged: list[package.Upload],
        enclave: dict[str, str] | None = None,
    ) -> dict[str, str]:
        enclave = enclave or {}
        return {
            "Prefix": self.prefix,
            "KeyArn": bootstrap["KeyArn"],
            "ArtifactBucket": bootstrap["ArtifactBucketName"],
            **{name: data[name] for name in DATA_OUTPUTS},
            **{upload.parameter: upload.key for upload in staged},
            "TrainingRepositoryArn": bootstrap["TrainingRepositoryArn"],
            "InferenceRepositoryArn": bootstrap["InferenceRepositoryArn"],
            **{image_output(image.role, "ImageTag"): image.tag for image in self.images(bootstrap)},
            "EndpointName": self.endpoint_name,
            "PipelineName": self.pipeline_name,
            "ModelPackageGroup": self.package_group,
            "RetrainingSchedule": self.retraining_schedule,
            "RetrainingState": "ENABLED" if self.retraining_enabled else "DISABLED",
            "FunctionConcurrency": str(self.function_concurrency),
            "LogLevel": self.log_level,
            "EndpointMaxInstances": str(self.max_instances),
            "InvocationsPerInstance": str(self.invocations_per_instance),
            "ScaleInCooldownSeconds": str(self.scale_in_cooldown),
            "ScaleOutCooldownSeconds": str(self.scale_out_cooldown),
            "KeepVersions": str(self.keep_versions),
            "RetireAfterDays": str(self.retire_after_days),
            "QuarantineAlarmPerHour": str(self.quarantine_alarm_per_hour),
            "EnclaveKeyArn": enclave.get("EnclaveKeyArn", ""),
            "EnclaveShardQueueUrl": enclave.get("EnclaveShardQueueUrl", ""),
        }


def plan(deployment: Deployment) -> dict[str, Any]:
    """Everything ``up`` would create, without calling AWS: values only known once the bootstrap stack exists
    are shown as ``<bootstrap:Output>``."""
    staged = deployment.uploads()
    placeholders = {
        "KeyArn": "<bootstrap:KeyArn>",
        "ArtifactBucketName": "<bootstrap:ArtifactBucketName>",
        "TrainingRepositoryArn": "<bootstrap:TrainingRepositoryArn>",
        "InferenceRepositoryArn": "<bootstrap:InferenceRepositoryArn>",
        "TrainingRepositoryUri": "<bootstrap:TrainingRepositoryUri>",
        "InferenceRepositoryUri": "<bootstrap:InferenceRepositoryUri>",
    }
    data = {name: f"<data:{name}>" for name in DATA_OUTPUTS}
    wanted = deployment.images(placeholders)
    enclave_stacks = []
    enclave: dict[str, str] = {}
    if deployment.enclave is not None:
        deployment.enclave.check_sizing()
        measurement = deployment.enclave.image_sha384 or "<nitro-cli describe-eif:PCR0>"
        enclave = {"EnclaveKeyArn": "<enclave:EnclaveKeyArn>", "EnclaveShardQueueUrl": "<enclave:EnclaveShardQueueUrl>"}
        enclave_stacks.append(
            {
                "name": deployment.enclave_stack,
                "template": ENCLAVE.name,
                "parameters": deployment.enclave_parameters(placeholders, data, measurement, "enclave/<wheel>"),
                "resources": resources(ENCLAVE),
            }
        )
    return {
        "stacks": [
            {
                "name": deployment.bootstrap_stack,
                "template": BOOTSTRAP.name,
                "parameters": deployment.bootstrap_parameters(),
                "resources": resources(BOOTSTRAP),
            },
            {
                "name": deployment.data_stack,
                "template": DATA.name,
                "parameters": deployment.data_parameters(placeholders),
                "resources": resources(DATA),
            },
            *enclave_stacks,
            {
                "name": deployment.product_stack,
                "template": PRODUCT.name,
                "parameters": deployment.product_parameters(placeholders, data, staged, enclave),
                "resources": resources(PRODUCT),
            },
        ],
        "uploads": {u.key: len(u.body) for u in staged},
        "images": {
            image.role: {
                "uri": image.uri,
                "dockerfile": image.dockerfile,
                "build": deployment.build_images,
                "push": deployment.build_images and deployment.push_images,
            }
            for image in wanted
        },
        "pipeline": {
            "name": deployment.pipeline_name,
            "role": "<product:ModelCreatorRoleArn>",
            "model_package_group": deployment.package_group,
            "schedule": deployment.retraining_schedule if deployment.retraining_enabled else "disabled",
        },
    }


def describe_plan(planned: dict[str, Any]) -> str:
    """The plan as a reader wants it: one line per resource."""
    lines = []
    for stack in planned["stacks"]:
        lines.append(f"stack {stack['name']} ({stack['template']}), {len(stack['resources'])} resources:")
        lines += [f"  {kind:40} {name}" for name, kind in stack["resources"].items()]
    lines.append("uploads to the artifact bucket:")
    lines += [f"  {key} ({size} bytes)" for key, size in planned["uploads"].items()]
    lines.append("container images:")
    for role, image in planned["images"].items():
        fate = "built and pushed" if image["push"] else "built, not pushed" if image["build"] else "expected to exist"
        lines.append(f"  {role:10} {image['uri']} ({fate}, {image['dockerfile']})")
    pipeline = planned["pipeline"]
    lines.append(
        f"SageMaker pipeline {pipeline['name']} (upsert), model package group {pipeline['model_package_group']}"
    )
    lines.append(f"  runs as {pipeline['role']}; retraining schedule: {pipeline['schedule']}")
    return "\n".join(lines)


def up(deployment: Deployment, report: Report = print) -> dict[str, str]:
    """Deploy or update everything; returns the deployment's outputs (both stacks, the images, the pipeline)."""
    bootstrap = stacks.apply(
        deployment.bootstrap_stack,
        body(BOOTSTRAP),
        deployment.bootstrap_parameters(),
        timeout=STACK_TIMEOUT_S,
        report=report,
    )
    data_parameters = deployment.data_parameters(bootstrap)
    data = stacks.apply(deployment.data_stack, body(DATA), data_parameters, timeout=STACK_TIMEOUT_S, report=report)
    wanted = deployment.images(bootstrap)
    if deployment.build_images:
        build_images(deployment, wanted, report)
    else:
        report(f"images not built here; the deployment uses {', '.join(i.uri for i in wanted)}")
    s3 = aws.client("s3")
    staged = deployment.uploads()
    for upload in staged:
        s3.put_object(Bucket=bootstrap["ArtifactBucketName"], Key=upload.key, Body=upload.body)
    report(f"staged {len(staged)} artifacts in s3://{bootstrap['ArtifactBucketName']}/workflow/")
    enclave = deploy_enclave_path(deployment, bootstrap, data, report) if deployment.enclave else None
    parameters = deployment.product_parameters(bootstrap, data, staged, enclave)
    stacks.apply(
        deployment.product_stack,
        body(PRODUCT),
        parameters,
        timeout=STACK_TIMEOUT_S,
        report=report,
        staging_bucket=bootstrap["ArtifactBucketName"],
    )
    outputs = read_outputs(deployment.prefix)
    pipeline = from_outputs(outputs, region=aws.region(), job_instance_type=deployment.job_instance_type).pipeline
    outputs["PipelineArn"] = runs.upsert(pipeline, report)
    return outputs


def deploy_enclave_path(
    deployment: Deployment, bootstrap: dict[str, str], data: dict[str, str], report: Report
) -> dict[str, str]:
    """The enclave image and the parent's wheel staged in the artifact bucket, then the enclave stack; its outputs."""
    fleet = deployment.enclave
    assert fleet is not None
    fleet.check_sizing()
    measurement = fleet.measurement()
    s3 = aws.client("s3")
    s3.upload_file(str(fleet.image), bootstrap["ArtifactBucketName"], fleet.image_key(measurement))
    wheel_name, wheel = staged_wheel()
    wheel_key = f"enclave/{wheel_name}"
    s3.put_object(Bucket=bootstrap["ArtifactBucketName"], Key=wheel_key, Body=wheel)
    report(f"enclave image {measurement} and the parent's wheel staged in s3://{bootstrap['ArtifactBucketName']}/")
    parameters = deployment.enclave_parameters(bootstrap, data, measurement, wheel_key)
    return stacks.apply(deployment.enclave_stack, body(ENCLAVE), parameters, timeout=STACK_TIMEOUT_S, report=report)


def build_images(deployment: Deployment, wanted: list[images.Image], report: Report) -> None:
    images.build_and_push(
        wanted, report, engine=deployment.image_engine, base_image=deployment.base_image, push=deployment.push_images
    )


def _empty_bucket(s3: Any, bucket: str) -> int:
    """Delete every version and delete marker of ``bucket``; returns how many."""
    removed = 0
    try:
        pages = list(s3.get_paginator("list_object_versions").paginate(Bucket=bucket))
    except s3.exceptions.NoSuchBucket:
        return 0
    for page in pages:
        entries = [
            {"Key": v["Key"], "VersionId": v["VersionId"]}
            for v in page.get("Versions", []) + page.get("DeleteMarkers", [])
        ]
        for start in range(0, len(entries), 1000):
            s3.delete_objects(Bucket=bucket, Delete={"Objects": entries[start : start + 1000], "Quiet": True})
        removed += len(entries)
    return removed


def _delete_pipeline(pipeline_name: str, report: Report) -> None:
    sagemaker = aws.client("sagemaker")
    try:
        sagemaker.delete_pipeline(PipelineName=pipeline_name)
        report(f"pipeline {pipeline_name}: deleted")
    except sagemaker.exceptions.ResourceNotFound:
        pass


def down(deployment: Deployment, *, delete_data: bool = False, report: Report = print) -> dict[str, list[str]]:
    """Tear the deployment down: every served version's stack, the pipeline and the product stack. The bootstrap
    and data stacks (key, artifact bucket, image repositories, buckets, audit log) stay, so a later ``up`` finds
    its data again, unless ``delete_data``: then they go too, contents included, and the key is scheduled for
    deletion.
    Returns what was deleted and what was kept."""
    known: dict[str, str] = {}
    for name in (deployment.bootstrap_stack, deployment.data_stack, deployment.enclave_stack, deployment.product_stack):
        if describe_stack(name) is not None:
            known.update(stack_outputs(name))
    if not known:
        report(f"no deployment {deployment.prefix}: none of its stacks exists")
        return {"deleted": [], "kept": []}
    # Only what the deployment itself names: a teardown never reaches for a default name of another one. Every
    # served version's stack goes first (its scaling, then its endpoint), before the product stack that holds the
    # service role it was made with.
    deleted: list[str] = []
    if "EndpointName" in known:
        for stack_name in version_stacks(known["EndpointName"]):
            if delete_stack(stack_name, report=report):
                deleted.append(stack_name)
    if "PipelineName" in known:
        _delete_pipeline(known["PipelineName"], report)
    deleted += owners.remove_all(deployment.prefix, report)
    # The product stack queues the enclave fleet's shards: it goes first. The enclave key outlives its stack (the
    # owners' bundles are encrypted under it): its deletion is scheduled with the data's, below.
    for stack_name in (deployment.product_stack, deployment.enclave_stack):
        if stacks.delete(stack_name, timeout=STACK_TIMEOUT_S, report=report):
            deleted.append(stack_name)
    if not delete_data:
        kept = [name for name in (deployment.bootstrap_stack, deployment.data_stack) if describe_stack(name)]
        report(f"kept {', '.join(kept)}: the key, buckets and audit log (fhe-deploy down --delete-data removes them)")
        return {"deleted": deleted, "kept": kept}
    s3 = aws.client("s3")
    buckets = [
        known[o] for o in ("DataBucketName", "ModelBucketName", "BundleBucketName", "ArtifactBucketName") if o in known
    ]
    for bucket in buckets:  # a bucket must be empty to go, versions included
        report(f"bucket {bucket}: {_empty_bucket(s3, bucket)} object versions deleted")
    for stack_name in (deployment.data_stack, deployment.bootstrap_stack):
        if stacks.delete(stack_name, timeout=STACK_TIMEOUT_S, report=report):
            deleted.append(stack_name)
    # The data buckets, the audit table and the key are Retain (a stack deleted by hand keeps them): deleted here.
    for bucket in buckets:
        _delete_bucket(s3, bucket)
        deleted.append(bucket)
    if "AuditTableName" in known:
        dynamodb = aws.client("dynamodb")
        try:
            dynamodb.delete_table(TableName=known["AuditTableName"])
            deleted.append(known["AuditTableName"])
        except dynamodb.exceptions.ResourceNotFoundException:
            pass
    # The keys outlive their stacks (the audit signing key is retained with the audit log): their deletion is
    # scheduled, as AWS allows no sooner.
    for output in ("KeyArn", "AuditSigningKeyArn", "EnclaveKeyArn"):
        if output in known:
            aws.client("kms").schedule_key_deletion(KeyId=known[output], PendingWindowInDays=7)
            report(f"key {known[output]}: deletion scheduled in 7 days")
    return {"deleted": deleted, "kept": []}


def _delete_bucket(s3: Any, bucket: str) -> None:
    try:
        s3.delete_bucket(Bucket=bucket)
    except s3.exceptions.ClientError as error:
        if error.response.get("Error", {}).get("Code") != "NoSuchBucket":
            raise
