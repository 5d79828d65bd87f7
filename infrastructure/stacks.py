"""The product's stacks' settings that a backend's CloudFormation may leave out, confirmed or applied: the
functions' reserved concurrency, the buckets' encryption and lifecycle. Creating, updating and deleting stacks is
``common.stacks``'s (re-exported here for ``fhe-deploy``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import aws
from common.stacks import StackError, apply, delete
from infrastructure.templates import load

__all__ = ["StackError", "apply", "check_bucket_settings", "check_reserved_concurrency", "delete"]


def _resources_of_type(name: str, kind: str) -> list[dict[str, Any]]:
    """The stack's resource summaries of one type (logical id, physical id, status)."""
    pages = aws.client("cloudformation").get_paginator("list_stack_resources").paginate(StackName=name)
    return [r for page in pages for r in page["StackResourceSummaries"] if r["ResourceType"] == kind]


def check_reserved_concurrency(
    name: str, template: Path, parameters: dict[str, str], report: Callable[[str], None] = print
) -> dict[str, int]:
    """Every function's reserved concurrency as the template declares it, applied where the backend left it out
    (the local stack's CloudFormation ignores the property); on AWS this only confirms. Returns name → limit."""
    declared_resources = load(template)["Resources"]
    lambda_ = aws.client("lambda")
    applied = {}
    for summary in _resources_of_type(name, "AWS::Lambda::Function"):
        declared = declared_resources.get(summary["LogicalResourceId"], {}).get("Properties", {})
        value = declared.get("ReservedConcurrentExecutions")
        if value is None:
            continue
        limit = int(parameters[value["Ref"]] if isinstance(value, dict) else value)
        function = summary["PhysicalResourceId"]
        if lambda_.get_function_concurrency(FunctionName=function).get("ReservedConcurrentExecutions") != limit:
            report(f"{name}: {summary['LogicalResourceId']:28} reserved concurrency set to {limit}")
            lambda_.put_function_concurrency(FunctionName=function, ReservedConcurrentExecutions=limit)
        applied[function] = limit
    return applied


def _with_values(node: Any, values: dict[str, str]) -> Any:
    """``node`` with each ``{"Ref": name}`` and ``{"Fn::GetAtt": [name, attribute]}`` replaced by its value in
    ``values`` (``name`` or ``name.attribute``): the bucket settings name parameters and the key only."""
    if isinstance(node, list):
        return [_with_values(item, values) for item in node]
    if isinstance(node, dict):
        if set(node) == {"Ref"}:
            return values[node["Ref"]]
        if set(node) == {"Fn::GetAtt"}:
            return values[".".join(node["Fn::GetAtt"])]
        return {key: _with_values(value, values) for key, value in node.items()}
    return node


def _encryption_request(declared: dict[str, Any]) -> dict[str, Any]:
    rules = []
    for rule in declared["ServerSideEncryptionConfiguration"]:
        by_default = dict(rule["ServerSideEncryptionByDefault"])
        rules.append({"ApplyServerSideEncryptionByDefault": by_default, "BucketKeyEnabled": rule["BucketKeyEnabled"]})
    return {"Rules": rules}


def _lifecycle_request(declared: dict[str, Any]) -> dict[str, Any]:
    """CloudFormation's LifecycleConfiguration in the S3 API's shape."""
    rules = []
    for rule in declared["Rules"]:
        request: dict[str, Any] = {
            "ID": rule["Id"],
            "Status": rule["Status"],
            "Filter": {"Prefix": rule.get("Prefix", "")},
        }
        if "ExpirationInDays" in rule:
            request["Expiration"] = {"Days": int(rule["ExpirationInDays"])}
        if "NoncurrentVersionExpiration" in rule:
            request["NoncurrentVersionExpiration"] = {
                "NoncurrentDays": int(rule["NoncurrentVersionExpiration"]["NoncurrentDays"])
            }
        if "AbortIncompleteMultipartUpload" in rule:
            days = int(rule["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"])
            request["AbortIncompleteMultipartUpload"] = {"DaysAfterInitiation": days}
        rules.append(request)
    return {"Rules": rules}


def _rule_summary(rule: dict[str, Any]) -> str:
    """What a lifecycle rule decides (its id, scope and days), in one comparable string."""
    return json.dumps(
        [
            rule.get("ID"),
            rule.get("Status"),
            (rule.get("Filter") or {}).get("Prefix", rule.get("Prefix", "")),
            (rule.get("Expiration") or {}).get("Days"),
            (rule.get("NoncurrentVersionExpiration") or {}).get("NoncurrentDays"),
            (rule.get("AbortIncompleteMultipartUpload") or {}).get("DaysAfterInitiation"),
        ]
    )


def check_bucket_settings(
    name: str,
    template: Path,
    values: dict[str, str],
    report: Callable[[str], None] = print,
) -> dict[str, dict[str, Any]]:
    """Every bucket's default encryption and lifecycle rules as the template declares them, applied where the
    backend's CloudFormation left them out (the local stack's ignores both); on AWS this only confirms. ``values``
    gives the parameters (defaults are read from the template) and any ``Resource.Attribute`` the settings name.
    Returns bucket → the settings it has now."""
    loaded = load(template)
    declared_resources = loaded["Resources"]
    defaults = {n: str(spec["Default"]) for n, spec in loaded.get("Parameters", {}).items() if "Default" in spec}
    values = {**defaults, **values}
    s3 = aws.client("s3")
    settled: dict[str, dict[str, Any]] = {}
    for summary in _resources_of_type(name, "AWS::S3::Bucket"):
        declared = _with_values(declared_resources[summary["LogicalResourceId"]]["Properties"], values)
        bucket = summary["PhysicalResourceId"]
        encryption = _encryption_request(declared["BucketEncryption"])
        current = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]
        if [r["ApplyServerSideEncryptionByDefault"] for r in current["Rules"]] != [
            r["ApplyServerSideEncryptionByDefault"] for r in encryption["Rules"]
        ]:
            report(f"{name}: {summary['LogicalResourceId']:28} default encryption set to SSE-KMS")
            s3.put_bucket_encryption(Bucket=bucket, ServerSideEncryptionConfiguration=encryption)
        lifecycle = _lifecycle_request(declared["LifecycleConfiguration"])
        try:
            rules = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
        except s3.exceptions.ClientError as error:
            if error.response.get("Error", {}).get("Code") != "NoSuchLifecycleConfiguration":
                raise
            rules = []
        if sorted(map(_rule_summary, rules)) != sorted(map(_rule_summary, lifecycle["Rules"])):
            report(f"{name}: {summary['LogicalResourceId']:28} lifecycle rules set")
            s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration=lifecycle)
        settled[bucket] = {"encryption": encryption, "lifecycle": lifecycle}
    return settled
