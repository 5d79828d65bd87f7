"""Model packages as the client and the deployment see them: the newest approved one of a group, where its
client artifacts are, and the endpoints that serve them: one per model version, ``<family>-v<version>``,
since FHE keys belong to the compiled circuit and a version's ciphertexts can only be served by its own server."""

from __future__ import annotations

import json
import re
from typing import Any

from common.artifacts import (
    CLIENT_ARTIFACTS_PROPERTY,
    MODEL_DIGEST_PROPERTY,
    MODEL_KIND_PROPERTY,
    MODEL_KINDS,
    PACKAGE_ARN_VARIABLE,
    PUBLISHED_PREFIX,
    VERSIONS_JSON,
)
from common.bundle.manifest import package_ref
from common.bundle.store import get_bytes
from common.s3uri import S3Uri
from common.versions import VersionsRecord


class ModelPackageError(LookupError):
    """No usable model package: none approved, or one without what the caller needs."""


def approved_packages(sagemaker: Any, group: str) -> list[dict[str, Any]]:
    """The summaries of every Approved package in ``group``, oldest version first."""
    paginator = sagemaker.get_paginator("list_model_packages")
    approved = [
        summary
        for page in paginator.paginate(ModelPackageGroupName=group, ModelApprovalStatus="Approved")
        for summary in page.get("ModelPackageSummaryList", [])
    ]
    return sorted(approved, key=lambda s: int(s.get("ModelPackageVersion", 0)))


def newest_approved(sagemaker: Any, group: str) -> dict[str, Any]:
    """The full description of the newest Approved package in ``group``."""
    approved = approved_packages(sagemaker, group)
    if not approved:
        raise ModelPackageError(f"model package group {group!r} has no Approved package; approve one first")
    return describe(sagemaker, approved[-1]["ModelPackageArn"])


SERVING_STATUSES = frozenset({"InService", "Creating", "Updating", "SystemUpdating", "RollingBack"})


def version_endpoint(family: str, version: int) -> str:
    """The endpoint that serves model version ``version`` of a deployment's endpoint ``family``."""
    return f"{family}-v{version}"


def served_versions(sagemaker: Any, family: str, *, serving_only: bool = True) -> dict[int, str]:
    """Model version → the endpoint of ``family`` serving it (in service, or on its way there; with
    ``serving_only`` False, in whatever state)."""
    pattern = re.compile(rf"^{re.escape(family)}-v(\d+)$")
    served = {}
    for page in sagemaker.get_paginator("list_endpoints").paginate(NameContains=f"{family}-v"):
        for endpoint in page.get("Endpoints", []):
            match = pattern.match(endpoint["EndpointName"])
            if match and (endpoint.get("EndpointStatus") in SERVING_STATUSES or not serving_only):
                served[int(match[1])] = str(endpoint["EndpointName"])
    return dict(sorted(served.items()))


def describe(sagemaker: Any, package_arn: str) -> dict[str, Any]:
    package: dict[str, Any] = sagemaker.describe_model_package(ModelPackageName=package_arn)
    return package


def require_approved(package: dict[str, Any]) -> None:
    if package.get("ModelApprovalStatus") != "Approved":
        raise ModelPackageError(f"{package['ModelPackageArn']} is {package.get('ModelApprovalStatus')}, not Approved")


def revocation_message(package_arn: str, version: int, note: str = "") -> str:
    """What a bundle stopped by its package's rejection is told: the same words from the revocation command and
    from the invoke function that finds the package no longer Approved."""
    return (
        f"model package {package_arn} was rejected{f' ({note})' if note else ''}: version {version} is no longer served"
    )


def model_kind(package: dict[str, Any]) -> str:
    """The path that serves ``package``: ``fhe`` or ``enclave`` (its customer metadata ``model_kind``; ``fhe`` when
    absent, as every package registered before the enclave path was)."""
    kind = str((package.get("CustomerMetadataProperties") or {}).get(MODEL_KIND_PROPERTY, "fhe"))
    if kind not in MODEL_KINDS:
        raise ModelPackageError(f"{package['ModelPackageArn']} names an unknown model kind {kind!r}")
    return kind


def enclave_model_digest(package: dict[str, Any]) -> str:
    """The SHA-256 of an enclave model's bytes, as registered: what the enclave's attestation must name."""
    digest = str((package.get("CustomerMetadataProperties") or {}).get(MODEL_DIGEST_PROPERTY, ""))
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise ModelPackageError(
            f"{package['ModelPackageArn']} records no enclave model digest ({MODEL_DIGEST_PROPERTY})"
        )
    return digest


def client_artifacts_uri(package: dict[str, Any]) -> S3Uri:
    """The S3 prefix where the Evaluate step of ``package``'s pipeline run wrote its ``client.zip``,
    ``preprocessing.json``, ``versions.json`` and ``costs.json``, whatever its approval: read by the deployment's
    own functions, the auditor and ML ops; batch owners read the published copy (``published_client_artifacts_uri``).
    """
    value = (package.get("CustomerMetadataProperties") or {}).get(CLIENT_ARTIFACTS_PROPERTY)
    if not value:
        raise ModelPackageError(
            f"{package['ModelPackageArn']} does not record its client artifacts ({CLIENT_ARTIFACTS_PROPERTY}); "
            "it was registered by an older pipeline: retrain it"
        )
    return S3Uri.parse(value)


def published_client_artifacts_uri(package: dict[str, Any]) -> S3Uri:
    """Where batch owners read the client artifacts of ``package`` once it is Approved: ``published/<group>/
    <version>/`` in the bucket of its run's own (``client_artifacts_uri``), which only ``fhe-pipeline approve``
    writes (pipelines/approval.py)."""
    ref = package_ref(package["ModelPackageArn"])
    bucket = client_artifacts_uri(package).bucket
    return S3Uri(bucket, f"{PUBLISHED_PREFIX}/{ref.package_group}/{ref.package_version}")


def served_package(sagemaker: Any, endpoint_name: str) -> tuple[str, str]:
    """``(endpoint status, ARN of the model package it serves)``, read from the endpoint's model."""
    endpoint = sagemaker.describe_endpoint(EndpointName=endpoint_name)
    config = sagemaker.describe_endpoint_config(EndpointConfigName=endpoint["EndpointConfigName"])
    model = sagemaker.describe_model(ModelName=config["ProductionVariants"][0]["ModelName"])
    container = model.get("PrimaryContainer") or {}
    # What SageMaker loads is the container's model package (its image and model data), or the image and model
    # data named directly; the environment's label is only what the serving app says of itself, so it counts only
    # where SageMaker's own record agrees with it.
    label = (container.get("Environment") or {}).get(PACKAGE_ARN_VARIABLE)
    package_arn = container.get("ModelPackageName")
    if package_arn and label and label != package_arn:
        raise ModelPackageError(f"endpoint {endpoint_name} serves {package_arn} but its model is labelled {label}")
    if not package_arn and label:
        package = sagemaker.describe_model_package(ModelPackageName=label)
        spec = ((package.get("InferenceSpecification") or {}).get("Containers") or [{}])[0]
        if (container.get("Image"), container.get("ModelDataUrl")) != (spec.get("Image"), spec.get("ModelDataUrl")):
            raise ModelPackageError(
                f"endpoint {endpoint_name} is labelled {label} but does not run that package's image and model data"
            )
        package_arn = label
    if not package_arn:
        raise ModelPackageError(f"endpoint {endpoint_name} serves a model that names no model package")
    return str(endpoint["EndpointStatus"]), str(package_arn)


def serving_versions(s3: Any, package: dict[str, Any]) -> VersionsRecord:
    """The releases ``package`` was trained and compiled with (its ``versions.json``)."""
    uri = client_artifacts_uri(package).join(VERSIONS_JSON)
    return VersionsRecord.from_dict(json.loads(get_bytes(s3, uri, field="model.versions", limit=64 * 1024)))
