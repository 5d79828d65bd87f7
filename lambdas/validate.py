"""Validate a dropped bundle before any endpoint work, and plan its shards.

Checks, in order: the manifest (format, limits, bundle id), the model package (registered and Approved), the
endpoint of the bundle's model version (``<family>-v<version>``: each served version has its own, since keys
belong to one compiled circuit; in service, serving that very package; an endpoint scaled to zero instances is
in service; a version no endpoint serves is refused naming the versions that are served), the
releases (the bundle's concrete versions against the served model's versions record), the evaluation key (the
bundle owner's own, under ``inbox/<owner>/keys/``) and
every shard object (present, of the recorded size: the bundle's folder listed a page at a time).
A failed check raises BundleRejected naming the field (and shard): the bundle is quarantined, nothing invoked.

The shard plan goes to S3 (``requests/<owner>/<bundle id>/plan.json``), where the Distributed Map's ItemReader reads it:
what the execution's state carries is the same few hundred bytes whatever the bundle's size.
"""

from __future__ import annotations

import re
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.exceptions import ClientError

from common.aws import is_missing
from common.bundle.manifest import Manifest
from common.bundle.schema import BundleError, check_relative_key
from common.bundle.serving import check_model, check_versions
from common.bundle.store import BundleLayout, bundle_prefix, listed_objects, read_manifest, write_shard_plan
from common.model_package import (
    ModelPackageError,
    require_approved,
    served_package,
    served_versions,
    serving_versions,
    version_endpoint,
)
from common.s3uri import S3Uri
from common.workflow import BundleRef
from lambdas.runtime import (
    BundleRejected,
    TransientError,
    WorkflowError,
    client,
    logger,
    metrics,
    setting,
    tracer,
    transient_aws_errors,
)

STAGE = "validate"
_SHARD_FIELD = re.compile(r"^shards\[(\d+)\]")
_SETTLING = frozenset({"Creating", "Updating", "SystemUpdating", "RollingBack"})


def rejected(error: BundleError) -> BundleRejected:
    match = _SHARD_FIELD.match(error.field)
    shard = int(match[1]) if match else None
    return BundleRejected(STAGE, error.code, str(error), field=error.field, shard=shard)


def approved_package(manifest: Manifest) -> dict[str, Any]:
    sagemaker = client("sagemaker")
    try:
        with transient_aws_errors():
            package: dict[str, Any] = sagemaker.describe_model_package(ModelPackageName=manifest.model.package_arn)
    except ClientError as error:
        if is_missing(error):
            raise BundleRejected(
                STAGE,
                "unknown_model",
                f"model package {manifest.model.package_arn} is not registered",
                field="model.package_arn",
            ) from None
        raise
    try:
        require_approved(package)
    except ModelPackageError as error:
        raise BundleRejected(STAGE, "model_not_approved", str(error), field="model.package_arn") from None
    return package


def not_served(manifest: Manifest, family: str) -> BundleRejected:
    with transient_aws_errors():
        served = sorted(served_versions(client("sagemaker"), family))
    model = manifest.model
    listed = ", ".join(str(v) for v in served) or "none"
    message = (
        f"model version {model.package_version} of {model.package_group} is not served (served versions: {listed}); "
        "run `fhe-client keys` for the newest approved model, then encrypt the bundle again"
    )
    return BundleRejected(STAGE, "version_not_served", message, field="model.package_version")


def check_endpoint(manifest: Manifest, endpoint: str, family: str | None = None) -> None:
    try:
        with transient_aws_errors():
            status, package_arn = served_package(client("sagemaker"), endpoint)
    except ClientError as error:
        if family is not None and is_missing(error):
            raise not_served(manifest, family) from None
        # The owner reads this reason: the call and AWS's code, never the refusal's text (it can name roles and
        # the account).
        code = error.response.get("Error", {}).get("Code", "error")
        message = f"endpoint {endpoint} could not be described ({error.operation_name}: {code})"
        raise WorkflowError(STAGE, "endpoint_unavailable", message) from None
    except ModelPackageError as error:
        raise WorkflowError(STAGE, "endpoint_unavailable", f"endpoint {endpoint}: {error}") from None
    if status in _SETTLING:
        raise TransientError(f"endpoint {endpoint} is {status}")
    if status != "InService":
        raise WorkflowError(STAGE, "endpoint_unavailable", f"endpoint {endpoint} is {status}, not InService")
    try:
        check_model(manifest, package_arn)
    except BundleError as error:
        raise rejected(error) from None


def check_releases(manifest: Manifest, package: dict[str, Any]) -> None:
    serving = serving_versions(client("s3"), package)
    try:
        check_versions(manifest, serving)
    except BundleError as error:
        raise rejected(error) from None


def check_size(uri: S3Uri, found: int | None, size: int, field: str) -> None:
    if found is None:
        raise rejected(BundleError(field, f"{uri} does not exist", "missing_object"))
    if found != size:
        raise rejected(BundleError(field, f"{uri} is {found} bytes, the manifest says {size}", "size_mismatch"))


def check_object_size(uri: S3Uri, size: int, field: str) -> None:
    try:
        with transient_aws_errors():
            head = client("s3").head_object(Bucket=uri.bucket, Key=uri.key)
    except ClientError as error:
        if is_missing(error):
            check_size(uri, None, size, field)
        raise
    check_size(uri, int(head["ContentLength"]), size, field)


def check_evaluation_key(manifest: Manifest, layout: BundleLayout) -> None:
    """The key must be the owner's own: the endpoint reads any inbox object, so a manifest naming another owner's
    key would have the endpoint use it."""
    uri = S3Uri.parse(manifest.evaluation_key.uri)
    own = layout.keys_prefix
    if uri.bucket != own.bucket or not uri.key.startswith(own.key + "/"):
        problem = f"{uri} is not one of the owner's evaluation keys (under {own}/); run `fhe-client keys`"
        raise rejected(BundleError("evaluation_key.uri", problem, "foreign_evaluation_key"))
    check_object_size(uri, manifest.evaluation_key.size, "evaluation_key")


def check_shards(manifest: Manifest, manifest_uri: S3Uri) -> None:
    """Every shard object present with its recorded size: one listing of the bundle's folder, not a request per
    shard."""
    prefix = bundle_prefix(manifest_uri)
    with transient_aws_errors():
        sizes = {obj["Key"]: int(obj["Size"]) for obj in listed_objects(client("s3"), prefix)}
    for entry in manifest.shards:
        field = f"shards[{entry.index}]"
        try:
            uri = prefix.join(check_relative_key(entry.key, f"{field}.key"))
        except BundleError as error:
            raise rejected(error) from None
        check_size(uri, sizes.get(uri.key), entry.size, field)


def validate(bundle: BundleRef, family: str) -> dict[str, Any]:
    """``family``: the deployment's endpoint name, which each served version's endpoint extends."""
    try:
        with transient_aws_errors():
            manifest, manifest_sha256 = read_manifest(client("s3"), bundle.manifest_uri)
        if manifest.kind != "request":
            raise BundleError("kind", f"the inbox takes request manifests, this one is {manifest.kind!r}")
        if manifest.bundle_id != bundle.bundle_id:
            problem = f"the manifest says {manifest.bundle_id!r}, it lies under {bundle.bundle_id!r}"
            raise BundleError("bundle_id", problem, "bundle_id_mismatch")
    except BundleError as error:
        raise rejected(error) from None
    package = approved_package(manifest)
    endpoint = version_endpoint(family, manifest.model.package_version)
    check_endpoint(manifest, endpoint, family)
    check_releases(manifest, package)
    check_evaluation_key(manifest, bundle.layout)
    check_shards(manifest, bundle.manifest_uri)
    with transient_aws_errors():
        plan = write_shard_plan(
            client("s3"), bundle.layout, bundle.bundle_id, [entry.index for entry in manifest.shards]
        )
    logger.info("bundle valid", extra={"shards": len(manifest.shards), "samples": manifest.total_samples})
    metrics.add_metric(name="BundlesValidated", unit=MetricUnit.Count, value=1)
    return {
        "endpoint": endpoint,
        "model_package_arn": manifest.model.package_arn,
        "request_sha256": manifest_sha256,
        "samples": manifest.total_samples,
        "shards": len(manifest.shards),
        "shard_plan": {"Bucket": plan.bucket, "Key": plan.key},  # the ItemReader's parameters
    }


@logger.inject_lambda_context(correlation_id_path="bundle.bundle_id")
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return validate(BundleRef.from_dict(event.get("bundle")), setting("ENDPOINT_NAME"))
