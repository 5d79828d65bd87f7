"""Retire a served model version: its stack (endpoint, configuration, model, scaling, alarm) is deleted once no
running bundle uses its endpoint. Revoke one (a rejected package): its stack goes at once, and the bundles waiting
on its endpoint are quarantined naming the revocation.

A bundle is using a version's endpoint from the moment Validate routes it there (its plan names the endpoint)
until its execution ends. Retirement refuses, naming those bundles, or waits for them (``wait_seconds``), and
then deletes the version's stack, waiting for its resources to go. A bundle dropped afterwards for that version
is quarantined at Validate, naming the versions still served; one still being validated at that moment meets the
same fate.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

from common import aws
from common.audit_log import VERSION_RETIRED
from common.bundle.manifest import package_ref
from common.model_package import revocation_message, served_versions, version_endpoint
from common.settings import EndpointSettings
from common.stack_outputs import describe_stack
from common.workflow import MAX_MESSAGE, FailureReason, WaitingShard, bundle_of_execution, waiting_shards
from pipelines.approval import announce
from pipelines.endpoint import EndpointError, delete_version_stack, version_stack


class RetirementError(RuntimeError):
    pass


def routed_endpoint(stepfunctions: Any, execution_arn: str) -> str | None:
    """The endpoint Validate routed an execution's bundle to; None before Validate has."""
    pages = stepfunctions.get_paginator("get_execution_history").paginate(executionArn=execution_arn)
    for page in pages:
        for event in page["events"]:
            details = event.get("stateExitedEventDetails") or {}
            if details.get("name") == "Validate":
                plan = json.loads(details.get("output") or "{}").get("plan") or {}
                return str(plan["endpoint"]) if plan.get("endpoint") else None
    return None


def running_bundles(stepfunctions: Any, state_machine_arn: str, endpoint: str) -> list[str]:
    """The bundles whose running executions were routed to ``endpoint``."""
    pages = stepfunctions.get_paginator("list_executions").paginate(
        stateMachineArn=state_machine_arn, statusFilter="RUNNING"
    )
    running = [e for page in pages for e in page["executions"]]
    return sorted(
        bundle_of_execution(e["name"]) for e in running if routed_endpoint(stepfunctions, e["executionArn"]) == endpoint
    )


def retire(
    settings: EndpointSettings,
    version: int,
    state_machine_arn: str,
    *,
    wait_seconds: float = 0.0,
    poll: float = 5.0,
    report: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Delete version ``version``'s stack once no running bundle uses its endpoint; with ``wait_seconds`` 0, refuse
    while one does."""
    sagemaker, stepfunctions = aws.client("sagemaker"), aws.client("stepfunctions")
    served = served_versions(sagemaker, settings.endpoint_name)
    if version not in served:
        listed = ", ".join(str(v) for v in served) or "none"
        raise RetirementError(f"version {version} is not served (served versions: {listed})")
    endpoint = version_endpoint(settings.endpoint_name, version)
    deadline, waited_for = time.monotonic() + wait_seconds, set()
    while running := running_bundles(stepfunctions, state_machine_arn, endpoint):
        waited_for.update(running)
        if time.monotonic() >= deadline:
            raise RetirementError(
                f"version {version} ({endpoint}) still serves running bundles: {', '.join(running)}; "
                "retire it when they end, or wait for them (--drain SECONDS)"
            )
        report(f"waiting for {len(running)} running bundle(s) on {endpoint}: {', '.join(running)}")
        time.sleep(poll)
    _delete_stack(settings, version, report)
    by = aws.client("sts").get_caller_identity()["Arn"]
    retired = {"endpoint": endpoint, "version": version, "waited_for": sorted(waited_for), "by": by}
    announce(VERSION_RETIRED, retired, endpoint)  # for the audit log
    report(f"version {version} retired: its stack {version_stack(settings.endpoint_name, version)} deleted")
    remaining = served_versions(sagemaker, settings.endpoint_name)
    return {"retired": endpoint, "version": version, "waited_for": sorted(waited_for), "served_versions": remaining}


def _delete_stack(settings: EndpointSettings, version: int, report: Callable[[str], None]) -> None:
    """The version's stack deleted, its resources gone; a served endpoint without a stack is named, not left."""
    try:
        deleted = delete_version_stack(settings.endpoint_name, version, report=report)
    except EndpointError as error:
        raise RetirementError(f"version {version} was not retired: {error}") from None
    if not deleted:
        raise RetirementError(
            f"version {version}'s endpoint {version_endpoint(settings.endpoint_name, version)} has no stack "
            f"{version_stack(settings.endpoint_name, version)} (an earlier release made it outside one): delete it "
            "and its scaling by hand"
        )


def versions_to_retire(
    served: Mapping[int, datetime], *, keep: int | None = None, older_than: timedelta | None = None, now: datetime
) -> list[int]:
    """Which served versions a retention rule retires: all but the newest ``keep``, and those deployed more than
    ``older_than`` ago; the newest version is never retired by a rule."""
    if keep is not None and keep < 1:
        raise RetirementError(f"--keep must be at least 1, not {keep}")
    newest = max(served, default=None)
    ordered = sorted(served, reverse=True)
    chosen = set(ordered[keep:]) if keep is not None else set()
    if older_than is not None:
        chosen |= {version for version, deployed in served.items() if now - deployed > older_than}
    return sorted(chosen - {newest})


def retire_by_rule(
    settings: EndpointSettings,
    state_machine_arn: str,
    *,
    wait_seconds: float = 0.0,
    report: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Retire what the settings' retention rule names (``keep_versions``, ``retire_after_days``); a version that
    still has running bundles after ``wait_seconds`` is kept for the next run and named."""
    keep, older_than_days = settings.keep_versions or None, settings.retire_after_days or None
    if keep is None and older_than_days is None:
        raise RetirementError(
            "no retention rule: give --keep K or --older-than-days D (or record one with fhe-deploy up "
            "--keep-versions K / --retire-after-days D)"
        )
    sagemaker = aws.client("sagemaker")
    served = served_versions(sagemaker, settings.endpoint_name)
    deployed = {
        version: sagemaker.describe_endpoint(EndpointName=name)["CreationTime"] for version, name in served.items()
    }
    older_than = timedelta(days=older_than_days) if older_than_days is not None else None
    now = datetime.now(tz=next(iter(deployed.values())).tzinfo) if deployed else datetime.now()
    retired, kept = [], {}
    for version in versions_to_retire(deployed, keep=keep, older_than=older_than, now=now):
        try:
            retired.append(
                retire(settings, version, state_machine_arn, wait_seconds=wait_seconds, report=report)["retired"]
            )
        except RetirementError as error:
            kept[version] = str(error)
            report(f"kept for now: {error}")
    return {"retired": retired, "kept": kept, "served_versions": served_versions(sagemaker, settings.endpoint_name)}


def revoke(
    settings: EndpointSettings, package_arn: str, note: str, workflow_table: str, report: Callable[[str], None] = print
) -> dict[str, Any]:
    """A rejected package stops being served at once: the shards waiting on its version's endpoint fail naming
    the revocation (their bundles are quarantined with it, not retried), then the version's stack goes."""
    version = package_ref(package_arn).package_version
    endpoint = version_endpoint(settings.endpoint_name, version)
    sagemaker, stepfunctions, dynamodb = aws.client("sagemaker"), aws.client("stepfunctions"), aws.client("dynamodb")
    stack = version_stack(settings.endpoint_name, version)
    if version not in served_versions(sagemaker, settings.endpoint_name, serving_only=False) and not describe_stack(
        stack
    ):
        return {"revoked": None, "version": version, "quarantined": []}
    message = revocation_message(package_arn, version, note)
    stopped = set()
    for shard in waiting_shards(dynamodb, workflow_table, endpoint):
        cause = FailureReason("infer", "model_revoked", message[:MAX_MESSAGE], shard=shard.shard_index)
        gone = (stepfunctions.exceptions.TaskTimedOut, stepfunctions.exceptions.TaskDoesNotExist)
        with contextlib.suppress(*gone, stepfunctions.exceptions.InvalidToken):
            stepfunctions.send_task_failure(taskToken=shard.task_token, error="ShardRejected", cause=cause.to_json())
        dynamodb.delete_item(TableName=workflow_table, Key=WaitingShard.key_of(shard.inference_id))
        stopped.add(shard.bundle_id)
    _delete_stack(settings, version, report)
    by = aws.client("sts").get_caller_identity()["Arn"]
    detail = {"endpoint": endpoint, "version": version, "revoked": True, "quarantined": sorted(stopped), "by": by}
    announce(VERSION_RETIRED, detail, endpoint)  # for the audit log
    report(f"version {version} revoked: its stack {stack} deleted, {len(stopped)} running bundle(s) quarantined")
    return {"revoked": endpoint, "version": version, "quarantined": sorted(stopped)}
