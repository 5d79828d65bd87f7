"""Model registry operations: model package groups and versioned model packages."""

from __future__ import annotations

import time
from typing import Any

from aws_emulators.sagemaker.errors import ResourceNotFound, ValidationError, required
from aws_emulators.sagemaker.store import Store

APPROVAL_STATUSES = ("Approved", "Rejected", "PendingManualApproval")


class Registry:
    def __init__(self, store: Store, arn_prefix: str) -> None:
        self.store = store
        self.arn_prefix = arn_prefix

    def create_model_package_group(self, body: dict[str, Any]) -> dict[str, Any]:
        name = required(body, "ModelPackageGroupName")
        if self.store.get("model-package-group", name):
            raise ValidationError(f"Model Package Group already exists: {name}")
        group = {
            "ModelPackageGroupName": name,
            "ModelPackageGroupArn": f"{self.arn_prefix}:model-package-group/{name.lower()}",
            "ModelPackageGroupDescription": body.get("ModelPackageGroupDescription", ""),
            "CreationTime": time.time(),
            "ModelPackageGroupStatus": "Completed",
            "CreatedBy": {},
        }
        self.store.put("model-package-group", name, group)
        return {"ModelPackageGroupArn": group["ModelPackageGroupArn"]}

    def describe_model_package_group(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._group(required(body, "ModelPackageGroupName"))

    def list_model_package_groups(self, body: dict[str, Any]) -> dict[str, Any]:
        groups = self.store.list("model-package-group")
        if body.get("NameContains"):
            groups = [g for g in groups if body["NameContains"] in g["ModelPackageGroupName"]]
        if body.get("SortOrder", "Ascending") == "Descending":
            groups.reverse()
        keys = (
            "ModelPackageGroupName",
            "ModelPackageGroupArn",
            "ModelPackageGroupDescription",
            "CreationTime",
            "ModelPackageGroupStatus",
        )
        return {"ModelPackageGroupSummaryList": [{k: g[k] for k in keys if k in g} for g in groups]}

    def _group(self, name_or_arn: str) -> dict[str, Any]:
        name = name_or_arn.rsplit("/", 1)[-1] if name_or_arn.startswith("arn:") else name_or_arn
        group = self.store.get("model-package-group", name)
        if group is None:
            for candidate in self.store.list("model-package-group"):
                if candidate["ModelPackageGroupName"].lower() == name.lower():
                    return candidate
            raise ValidationError(f"Model Package Group {name_or_arn} does not exist.")
        return group

    def create_model_package(self, body: dict[str, Any], created_by: dict[str, Any] | None = None) -> dict[str, Any]:
        group = self._group(required(body, "ModelPackageGroupName"))
        status = body.get("ModelApprovalStatus", "PendingManualApproval")
        if status not in APPROVAL_STATUSES:
            raise ValidationError(f"ModelApprovalStatus must be one of {', '.join(APPROVAL_STATUSES)}")
        if "InferenceSpecification" not in body:
            raise ValidationError("InferenceSpecification is required for a versioned model package")
        with self.store.transaction():
            version = len(self.store.list("model-package", parent=group["ModelPackageGroupName"])) + 1
            arn = f"{self.arn_prefix}:model-package/{group['ModelPackageGroupName'].lower()}/{version}"
            now = time.time()
            package = {
                **{k: v for k, v in body.items() if k not in ("ClientToken", "Tags")},
                # A versioned package is named by its group.
                "ModelPackageName": group["ModelPackageGroupName"],
                "ModelPackageGroupName": group["ModelPackageGroupName"],
                "ModelPackageVersion": version,
                "ModelPackageArn": arn,
                "ModelApprovalStatus": status,
                "ModelPackageStatus": "Completed",
                "ModelPackageStatusDetails": {"ValidationStatuses": [], "ImageScanStatuses": []},
                "CreationTime": now,
                "LastModifiedTime": now,
                "CreatedBy": created_by or {},
                "LastModifiedBy": created_by or {},
            }
            self.store.put("model-package", arn, package, parent=group["ModelPackageGroupName"])
        return {"ModelPackageArn": arn}

    def describe_model_package(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._package(required(body, "ModelPackageName"))

    def _package(self, arn: str) -> dict[str, Any]:
        package = self.store.get("model-package", arn)
        if package is None:
            raise ValidationError(f"ModelPackage {arn} does not exist.")
        return package

    def list_model_packages(self, body: dict[str, Any]) -> dict[str, Any]:
        group = body.get("ModelPackageGroupName")
        packages = (
            self.store.list("model-package", parent=self._group(group)["ModelPackageGroupName"])
            if group
            else self.store.list("model-package")
        )
        if body.get("ModelApprovalStatus"):
            packages = [p for p in packages if p["ModelApprovalStatus"] == body["ModelApprovalStatus"]]
        if body.get("SortOrder", "Ascending") == "Descending":
            packages.reverse()
        keys = (
            "ModelPackageGroupName",
            "ModelPackageVersion",
            "ModelPackageArn",
            "ModelPackageDescription",
            "CreationTime",
            "ModelPackageStatus",
            "ModelApprovalStatus",
        )
        summaries = [{k: p[k] for k in keys if k in p} for p in packages]
        limit = int(body.get("MaxResults", 100))
        return {"ModelPackageSummaryList": summaries[:limit]}

    def update_model_package(self, body: dict[str, Any], modified_by: dict[str, Any] | None = None) -> dict[str, Any]:
        arn = required(body, "ModelPackageArn")
        with self.store.transaction():
            package = self._package(arn)
            now = time.time()
            if "ModelApprovalStatus" in body:
                status = body["ModelApprovalStatus"]
                if status not in APPROVAL_STATUSES:
                    raise ValidationError(f"ModelApprovalStatus must be one of {', '.join(APPROVAL_STATUSES)}")
                package["ModelApprovalStatus"] = status
                package["ApprovalDescription"] = body.get("ApprovalDescription", "")
            for key in ("CustomerMetadataProperties", "ModelCard", "InferenceSpecification", "SourceUri"):
                if key in body:
                    package[key] = body[key]
            package["LastModifiedTime"] = now
            package["LastModifiedBy"] = modified_by or {}
            self.store.put("model-package", arn, package, parent=package["ModelPackageGroupName"])
        return {"ModelPackageArn": arn}


__all__ = ["APPROVAL_STATUSES", "Registry", "ResourceNotFound"]
