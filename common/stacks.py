"""CloudFormation stacks, the same on AWS and on the local stack: create or update one and wait for it with
progress, delete one, find those a tag names. Whoever deploys stacks uses these: ``fhe-deploy`` for the product's
own, ``fhe-pipeline deploy`` and ``retire`` for each served model version's."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping
from typing import Any

from common import aws
from common.stack_outputs import describe_stack, stack_outputs

_TERMINAL_OK = {"CREATE_COMPLETE", "UPDATE_COMPLETE"}
# IAM: the stacks create roles, some named; AUTO_EXPAND: the product template's SAM transform.
CAPABILITIES = ["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM", "CAPABILITY_AUTO_EXPAND"]


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
    template: str,
    parameters: Mapping[str, str],
    *,
    timeout: float,
    report: Callable[[str], None],
    staging_bucket: str | None = None,
    role_arn: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Create the stack or update it to ``template`` (its text, ``infrastructure.templates.body``) with
    ``parameters``; wait; return its outputs. A template over CloudFormation's inline limit (51,200 bytes) is read
    from ``staging_bucket``, where it is put first, under a key named after the stack and the template's hash.
    ``role_arn``: the service role CloudFormation acts with (None: the caller's own permissions); ``tags`` go on
    the stack, and CloudFormation puts them on each resource that takes tags."""
    cloudformation = aws.client("cloudformation")
    arguments: dict[str, Any] = {
        "StackName": name,
        "Parameters": [{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()],
        "Capabilities": CAPABILITIES,
    }
    if role_arn:
        arguments["RoleARN"] = role_arn
    if tags:
        arguments["Tags"] = [{"Key": k, "Value": v} for k, v in tags.items()]
    if staging_bucket is None:
        arguments["TemplateBody"] = template
    else:
        body = template.encode()
        key = f"templates/{name}-{hashlib.sha256(body).hexdigest()[:16]}.template"
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
    """Delete the stack and wait, reporting its events; False when there was none. Resources marked Retain stay.
    CloudFormation deletes with the service role the stack was made with, if any."""
    if describe_stack(name) is None:
        return False
    cloudformation = aws.client("cloudformation")
    seen = _event_ids(name)
    cloudformation.delete_stack(StackName=name)
    deadline = time.monotonic() + timeout
    while (stack := describe_stack(name)) is not None and stack["StackStatus"] != "DELETE_COMPLETE":
        for event in reversed(cloudformation.describe_stack_events(StackName=name).get("StackEvents", [])):
            if event["EventId"] not in seen:
                seen.add(event["EventId"])
                report(f"{name}: {event['LogicalResourceId']:28} {event['ResourceStatus']}")
        if stack["StackStatus"] == "DELETE_FAILED":
            raise StackError(f"stack {name} could not be deleted: {stack.get('StackStatusReason', '')}")
        if time.monotonic() > deadline:
            raise StackError(f"stack {name} is still {stack['StackStatus']}")
        time.sleep(1.0)
    report(f"{name}: deleted")
    return True


def tagged(key: str, value: str) -> list[str]:
    """The names of the stacks (in any state but deleted) whose tag ``key`` is ``value``, sorted."""
    pages = aws.client("cloudformation").get_paginator("describe_stacks").paginate()
    return sorted(
        str(stack["StackName"])
        for page in pages
        for stack in page.get("Stacks", [])
        if stack.get("StackStatus") != "DELETE_COMPLETE"
        and any(tag["Key"] == key and tag["Value"] == value for tag in stack.get("Tags", []))
    )


def resources(name: str) -> dict[str, dict[str, Any]]:
    """The stack's resources by logical id: each one's type, physical id and status (ListStackResources)."""
    pages = aws.client("cloudformation").get_paginator("list_stack_resources").paginate(StackName=name)
    return {r["LogicalResourceId"]: r for page in pages for r in page["StackResourceSummaries"]}
