"""ML ops' decision on a model package: approve or reject it, and announce the decision for the audit log."""

from __future__ import annotations

import json
from typing import Any

from common import aws
from common.audit_log import APPROVAL_DECISION, APPROVAL_FIELDS, REGISTRY_EVENT_SOURCE
from common.model_package import describe

DECISIONS = ("Approved", "Rejected")


class ApprovalError(RuntimeError):
    pass


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
    publish_decision(package)
    return {"arn": package_arn, "status": package["ModelApprovalStatus"], "note": package.get("ApprovalDescription")}


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


def announce(detail_type: str, detail: dict[str, Any], resource: str) -> None:
    """An event of the model registry's source on the default bus, for the audit log (approvals, versions
    served and retired); raises RuntimeError when EventBridge refuses it."""
    response = aws.client("events").put_events(
        Entries=[
            {
                "Source": REGISTRY_EVENT_SOURCE,
                "DetailType": detail_type,
                "Detail": json.dumps(detail, default=str, sort_keys=True),
                "Resources": [resource],
            }
        ]
    )
    if response.get("FailedEntryCount"):
        raise RuntimeError(f"its event was refused: {response['Entries']}")
