"""Validate a dropped bundle before any endpoint work, and plan its shards.

Checks, in order: the manifest (format, limits, bundle id), the model package (registered and Approved), the
endpoint of the bundle's model version (``<family>-v<version>``: each served version has its own, since keys
belong to one compiled circuit; in service, serving that very package; an endpoint scaled to zero instances is
in service; a version no endpoint serves is refused naming the versions that are served), the
releases (the bundle's concrete versions against the served model's versions record), the evaluation key (the
bundle owner's own, under ``inbox/<owner>/keys/``) and
every shard object (present, of the recorded size: the bundle's folder listed a page at a time).
A failed check raises BundleRejected naming the field (and shard): the bundle is quarantined, nothing invoked.

An enclave bundle (``common/bundle/enclave_manifest.py``) is validated for the enclave path instead: its manifest,
the model package (Approved, and registered as an enclave model), its data key made under the deployment's enclave
key (``ENCLAVE_KEY_ARN``; a deployment without the enclave path refuses it), and every shard object. Which path a
bundle takes is the registered model's kind: a bundle whose manifest is for the other path is refused
(``wrong_path``), so an FHE bundle never reaches an enclave, nor an enclave bundle an endpoint.

The shard plan goes to S3 (``requests/<owner>/<bundle id>/plan.json``), where the Distributed Map's ItemReader reads it:
what the execution's state carries is the same few hundred bytes whatever the bundle's size.
"""

from __future__ import annotations

import os
import re
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.exceptions import ClientError

from common.aws import is_missing
from common.bundle.enclave_manifest import bundle_path, parse_enclave_manifest
from common.bundle.manifest import Manifest, ModelRef, ShardEntry, parse_manifest
from common.bundle.schema import MAX_MANIFEST_BYTES, BundleError, check_relative_key, sha256_hex
from common.bundle.serving import check_model, check_versions
from common.bundle.store import BundleLayout, bundle_prefix, get_bytes, listed_objects, write_shard_plan
from common.model_package import (
    ModelPackageError,
    model_kind,
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


def approved_package(model: ModelRef, path: str) -> dict[str, Any]:
    """The bundle's model package: registered, Approved, and served by ``path`` (the bundle's own)."""
    sagemaker = client("sagemaker")
    try:
        with transient_aws_errors():
            package: dict[str, Any] = sagemaker.describe_model_package(ModelPackageName=model.package_arn)
    except ClientError as error:
        if is_missing(error):
            raise BundleRejected(
                STAGE,
                "unknown_model",
                f"model package {model.package_arn} is not registered",
                field="model.package_arn",
            ) from None
        raise
    try:
        require_approved(package)
        kind = model_kind(package)
    except ModelPackageError as error:
        raise BundleRejected(STAGE, "model_not_approved", str(error), field="model.package_arn") from None
    if kind != path:
        message = (
            f"model package {model.package_arn} is served by the {kind} path, and this is an {path} bundle: "
            f"encrypt it again for the {kind} path (`fhe-client`)"
        )
        raise BundleRejected(STAGE, "wrong_path", message, field="model.package_arn")
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


def check_shards(shards: tuple[ShardEntry, ...], manifest_uri: S3Uri) -> None:
    """Every shard object present with its recorded size: one listing of the bundle's folder, not a request per
    shard."""
    prefix = bundle_prefix(manifest_uri)
    with transient_aws_errors():
        sizes = {obj["Key"]: int(obj["Size"]) for obj in listed_objects(client("s3"), prefix)}
    for entry in shards:
        field = f"shards[{entry.index}]"
        try:
            uri = prefix.join(check_relative_key(entry.key, f"{field}.key"))
        except BundleError as error:
            raise rejected(error) from None
        check_size(uri, sizes.get(uri.key), entry.size, field)


def _check_request(kind: str, bundle_id: str, bundle: BundleRef) -> None:
    if kind != "request":
        raise BundleError("kind", f"the inbox takes request manifests, this one is {kind!r}")
    if bundle_id != bundle.bundle_id:
        problem = f"the manifest says {bundle_id!r}, it lies under {bundle.bundle_id!r}"
        raise BundleError("bundle_id", problem, "bundle_id_mismatch")


def _plan(
    bundle: BundleRef, path: str, shards: tuple[ShardEntry, ...], package_arn: str, sha256: str
) -> dict[str, Any]:
    with transient_aws_errors():
        plan = write_shard_plan(client("s3"), bundle.layout, bundle.bundle_id, [entry.index for entry in shards])
    samples = sum(entry.samples for entry in shards)
    logger.info("bundle valid", extra={"path": path, "shards": len(shards), "samples": samples})
    metrics.add_metric(name="BundlesValidated", unit=MetricUnit.Count, value=1)
    return {
        "path": path,
        "model_package_arn": package_arn,
        "request_sha256": sha256,
        "samples": samples,
        "shards": len(shards),
        "shard_plan": {"Bucket": plan.bucket, "Key": plan.key},  # the ItemReader's parameters
    }


def validate_fhe(bundle: BundleRef, data: bytes, family: str) -> dict[str, Any]:
    """``family``: the deployment's endpoint name, which each served version's endpoint extends."""
    try:
        manifest = parse_manifest(data)
        _check_request(manifest.kind, manifest.bundle_id, bundle)
    except BundleError as error:
        raise rejected(error) from None
    package = approved_package(manifest.model, "fhe")
    endpoint = version_endpoint(family, manifest.model.package_version)
    check_endpoint(manifest, endpoint, family)
    check_releases(manifest, package)
    check_evaluation_key(manifest, bundle.layout)
    check_shards(manifest.shards, bundle.manifest_uri)
    plan = _plan(bundle, "fhe", manifest.shards, manifest.model.package_arn, sha256_hex(data))
    return {**plan, "endpoint": endpoint}


def validate_enclave(bundle: BundleRef, data: bytes, enclave_key_arn: str) -> dict[str, Any]:
    """``enclave_key_arn``: the deployment's enclave key (empty where it has no enclave path)."""
    try:
        manifest = parse_enclave_manifest(data)
        _check_request(manifest.kind, manifest.bundle_id, bundle)
    except BundleError as error:
        raise rejected(error) from None
    if not enclave_key_arn:
        message = "this deployment has no enclave path: its models are served with FHE (`fhe-client`)"
        raise BundleRejected(STAGE, "path_not_deployed", message, field="enclave")
    if manifest.enclave.key_arn != enclave_key_arn:
        problem = f"the data key was made under {manifest.enclave.key_arn}, not the deployment's enclave key"
        raise rejected(BundleError("enclave.key_arn", problem, "foreign_key"))
    model = manifest.header.model
    approved_package(model, "enclave")
    check_shards(manifest.shards, bundle.manifest_uri)
    return {**_plan(bundle, "enclave", manifest.shards, model.package_arn, sha256_hex(data)), "endpoint": None}


def validate(bundle: BundleRef, family: str, enclave_key_arn: str = "") -> dict[str, Any]:
    """The bundle's plan, for the path its manifest is for (the model's kind decides whether it may take it)."""
    try:
        with transient_aws_errors():
            data = get_bytes(client("s3"), bundle.manifest_uri, field="manifest", limit=MAX_MANIFEST_BYTES)
        path = bundle_path(data)
    except BundleError as error:
        raise rejected(error) from None
    if path == "enclave":
        return validate_enclave(bundle, data, enclave_key_arn)
    return validate_fhe(bundle, data, family)


@logger.inject_lambda_context(correlation_id_path="bundle.bundle_id")
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return validate(
        BundleRef.from_dict(event.get("bundle")), setting("ENDPOINT_NAME"), os.environ.get("ENCLAVE_KEY_ARN", "")
    )
