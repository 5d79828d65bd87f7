"""CloudFormation stacks, the same on AWS and on the local stack: create or update and wait with progress, read
outputs, delete, and apply the functions' reserved concurrency where a backend's CloudFormation left it out."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import aws
from common.stack_outputs import describe_stack, stack_outputs
from infrastructure.templates import load

_TERMINAL_OK = {"CREATE_COMPLETE", "UPDATE_COMPLETE"}
CAPABILITIES = ["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM"]


class StackError(RuntimeError):
    """A stack that does not exist, failed, or did not settle in time."""


def _event_ids(name: str) -> set[str]:
    events = aws.client("cloudformation").describe_stack_events(StackName=name).get("StackEvents", [])
    return {event["EventId"] for event in events}


def _wait(name: str, timeout: float, report: Callable[[str], None], seen: set[str]) -> dict[str, Any]:
    """Until the stack settles, reporting each event not in ``seen`` (the events of earlier operations)."""
    cloudformation = aws.client("cloudformation")
    deadline = time.monotonic() + timeout
    while True:
        stack = describe_stack(name)
        if stack is None:
            raise StackError(f"stack {name} disappeared")
        for event in reversed(cloudformation.describe_stack_events(StackName=name).get("StackEvents", [])):
            if event["EventId"] not in seen:
                seen.add(event["EventId"])
                reason = f" ({event['ResourceStatusReason']})" if event.get("ResourceStatusReason") else ""
                report(f"{name}: {event['LogicalResourceId']:28} {event['ResourceStatus']}{reason}")
        status = stack["StackStatus"]
        if status in _TERMINAL_OK:
            return stack
        if status.endswith(("FAILED", "ROLLBACK_COMPLETE")) or status == "DELETE_COMPLETE":
            raise StackError(f"stack {name} ended {status}: {stack.get('StackStatusReason', '')}")
        if time.monotonic() > deadline:
            raise StackError(f"stack {name} is still {status} after {timeout:.0f} s")
        time.sleep(1.0)


def apply(
    name: str,
    template: Path,
    parameters: dict[str, str],
    *,
    timeout: float,
    report: Callable[[str], None],
    staging_bucket: str | None = None,
) -> dict[str, str]:
    """Create the stack or update it to ``template`` with ``parameters``; wait; return its outputs. A template
    over CloudFormation's inline limit (51,200 bytes) is read from ``staging_bucket``, where it is put first."""
    cloudformation = aws.client("cloudformation")
    body = template.read_bytes()
    arguments: dict[str, Any] = {
        "StackName": name,
        "Parameters": [{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()],
        "Capabilities": CAPABILITIES,
    }
    if staging_bucket is None:
        arguments["TemplateBody"] = body.decode()
    else:
        key = f"templates/{template.stem}-{hashlib.sha256(body).hexdigest()[:16]}.yaml"
        aws.client("s3").put_object(Bucket=staging_bucket, Key=key, Body=body)
        # Path-style: the form CloudFormation accepts for every bucket name.
        arguments["TemplateURL"] = f"https://s3.{aws.region()}.amazonaws.com/{staging_bucket}/{key}"
    seen: set[str] = set()
    existing = describe_stack(name)
    if existing is not None and existing["StackStatus"] == "ROLLBACK_COMPLETE":
        # A first creation that failed leaves an empty stack that can only be deleted; its events said why.
        report(f"{name}: its creation failed earlier; deleting what is left of it and creating it again")
        delete(name, timeout=timeout, report=report)
        existing = None
    if existing is None:
        cloudformation.create_stack(**arguments)
    else:
        seen = _event_ids(name)
        try:
            cloudformation.update_stack(**arguments)
        except cloudformation.exceptions.ClientError as error:
            if "No updates are to be performed" not in str(error):
                raise
            report(f"{name}: up to date")
    _wait(name, timeout, report, seen)
    return stack_outputs(name)


def delete(name: str, *, timeout: float, report: Callable[[str], None]) -> bool:
    """Delete the stack and wait; False when there was none. Resources marked Retain stay."""
    if describe_stack(name) is None:
        return False
    aws.client("cloudformation").delete_stack(StackName=name)
    deadline = time.monotonic() + timeout
    while (stack := describe_stack(name)) is not None and stack["StackStatus"] != "DELETE_COMPLETE":
        if stack["StackStatus"] == "DELETE_FAILED":
            raise StackError(f"stack {name} could not be deleted: {stack.get('StackStatusReason', '')}")
        if time.monotonic() > deadline:
            raise StackError(f"stack {name} is still {stack['StackStatus']}")
        time.sleep(1.0)
    report(f"{name}: deleted")
    return True


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
