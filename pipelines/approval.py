"""ML ops' decision on a model package: approve or reject it, announce the decision with who made it, and
publish the approved package's client artifacts where batch owners read them (or withdraw them on a rejection).

Batch owners' roles read client artifacts only under ``published/<group>/`` of the model bucket, which only this
decision writes: IAM cannot tell an approved run's objects from an unapproved one's by their key, so approval is
a copy into a place only approved packages reach.

The decision's announcement names no decider: the audit log takes who decided from SageMaker's own record of
the package (``LastModifiedBy``), never from a field the caller fills in.
"""

from __future__ import annotations

import json
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from common import aws
from common.artifacts import ENCLAVE_MODEL_JSON, client_artifacts, published_artifacts
from common.audit_log import APPROVAL_DECISION, APPROVAL_FIELDS, REGISTRY_EVENT_SOURCE
from common.bundle.store import get_bytes, object_exists
from common.enclave_model import EnclaveModelError, EnclaveModelRecord
from common.model_package import (
    ModelPackageError,
    client_artifacts_uri,
    describe,
    model_kind,
    published_client_artifacts_uri,
)
from common.s3uri import S3Uri

DECISIONS = ("Approved", "Rejected")


class ApprovalError(RuntimeError):
    pass


class PublicationError(ApprovalError):
    """The decision is set and announced, but the client artifacts were not published (an approval) or not
    withdrawn (a rejection); ``decided`` is what was decided. Running the same decision again finishes it."""

    def __init__(self, message: str, decided: dict[str, Any]) -> None:
        super().__init__(message)
        self.decided = decided


def approve(package_arn: str | None, group: str, decision: str, note: str) -> dict[str, Any]:
    """Set the approval of ``package_arn`` (default: the newest package of ``group`` pending approval)."""
    if decision not in DECISIONS:
        raise ApprovalError(f"the decision must be one of {', '.join(DECISIONS)}, not {decision!r}")
    sagemaker = aws.client("sagemaker")
    if package_arn is None:
        pending = sagemaker.list_model_packages(
            ModelPackageGroupName=group, ModelApprovalStatus="PendingManualApproval", SortOrder="Descending"
        )["ModelPackageSummaryList"]
        if not pending:
            raise ApprovalError(f"model package group {group!r} has no package pending approval")
        package_arn = max(pending, key=lambda s: int(s["ModelPackageVersion"]))["ModelPackageArn"]
    sagemaker.update_model_package(ModelPackageArn=package_arn, ModelApprovalStatus=decision, ApprovalDescription=note)
    package = describe(sagemaker, package_arn)
    # Published only once Approved, withdrawn only once Rejected: a rejection is never held up by S3, and the
    # revocation that follows it (fhe-pipeline approve --reject) runs whatever happens here.
    s3, published, failure = aws.client("s3"), None, None
    try:
        if decision == "Approved":
            published = str(publish_client_artifacts(s3, package))
        else:
            withdraw_client_artifacts(s3, package)
    except (ModelPackageError, ClientError, BotoCoreError) as error:
        failure = error
    publish_decision(package)
    decided = {
        "arn": package_arn,
        "status": package["ModelApprovalStatus"],
        "note": package.get("ApprovalDescription"),
        "client_artifacts": published,
    }
    if failure is not None:
        what = "not published" if decision == "Approved" else "still published"
        raise PublicationError(
            f"{package_arn} is {decision} but its client artifacts are {what} ({failure}); run the decision again",
            decided,
        )
    return decided


def publish_client_artifacts(s3: Any, package: dict[str, Any]) -> S3Uri:
    """Copy the client artifacts (and costs, when measured) of ``package``'s run to where batch owners read them;
    returns that place. The run must have all the client artifacts of the package's kind (``client_artifacts``)."""
    source, target = client_artifacts_uri(package), published_client_artifacts_uri(package)
    kind = model_kind(package)
    present = [name for name in published_artifacts(kind) if object_exists(s3, source.join(name))]
    missing = [name for name in client_artifacts(kind, _takes_text(s3, source, kind)) if name not in present]
    if missing:
        raise ModelPackageError(f"its run has no {', '.join(missing)} under {source}")
    for name in present:
        copy_from = source.join(name)
        s3.copy_object(
            Bucket=target.bucket,
            Key=target.join(name).key,
            CopySource={"Bucket": copy_from.bucket, "Key": copy_from.key},
        )
    return target


def _takes_text(s3: Any, source: S3Uri, kind: str) -> bool:
    """Whether the run's enclave model is a language model (its record says so): it has no preprocessing.json."""
    if kind != "enclave" or not object_exists(s3, source.join(ENCLAVE_MODEL_JSON)):
        return False
    record = get_bytes(s3, source.join(ENCLAVE_MODEL_JSON), field=ENCLAVE_MODEL_JSON, limit=64 * 1024)
    try:
        return EnclaveModelRecord.from_dict(json.loads(record)).takes_text
    except (ValueError, EnclaveModelError):
        return False


def withdraw_client_artifacts(s3: Any, package: dict[str, Any]) -> S3Uri | None:
    """Delete the published client artifacts of ``package`` (a delete marker each: the bucket keeps versions,
    which batch owners may not read); returns where they were, None when the package never had any."""
    try:
        target = published_client_artifacts_uri(package)
    except ModelPackageError:  # no client artifacts recorded: nothing was ever published
        return None
    for name in published_artifacts(model_kind(package)):
        s3.delete_object(Bucket=target.bucket, Key=target.join(name).key)
    return target


def publish_decision(package: dict[str, Any]) -> None:
    """Announce an approval decision on the default event bus, where the audit log records it.

    The announcement names the package and the decision only: the recorder reads what was decided, when and by
    whom from the registry itself (DescribeModelPackage's LastModifiedBy), and refuses an announcement whose status
    the registry does not hold or that names a decider of its own. On AWS SageMaker also sends its own state
    change event for every decision, including those made elsewhere (the console).
    """
    detail = {k: package[k] for k in APPROVAL_FIELDS if k in package}
    try:
        announce(APPROVAL_DECISION, detail, package["ModelPackageArn"])
    except RuntimeError as error:
        raise ApprovalError(f"the approval was set but {error}") from None


def announce(detail_type: str, detail: dict[str, Any], resource: str, source: str = REGISTRY_EVENT_SOURCE) -> str:
    """An event on the default bus for the audit log (by default the model registry's: approvals, versions served
    and retired); its event id. Raises RuntimeError when EventBridge refuses it."""
    response = aws.client("events").put_events(
        Entries=[
            {
                "Source": source,
                "DetailType": detail_type,
                "Detail": json.dumps(detail, default=str, sort_keys=True),
                "Resources": [resource],
            }
        ]
    )
    if response.get("FailedEntryCount"):
        raise RuntimeError(f"its event was refused: {response['Entries']}")
    return str(response["Entries"][0].get("EventId", ""))
