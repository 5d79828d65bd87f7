"""Quarantine a bundle that could not be processed: a reason record naming the stage and shard under
``quarantine/<owner>/<bundle id>/reason.json``, then a "Bundle Quarantined" event. The inbox objects stay where
they are: nothing is deleted, so the batch owner (or an operator) can inspect, fix and drop again.

A shard that fails fails its child execution of the Distributed Map, and the Map fails with
``States.ExceedToleratedFailureThreshold``, which names no shard: the failed child is looked up through the
execution's map run (ListMapRuns → ListExecutions → DescribeExecution), and its own error and cause, which name
the shard, are what the record says."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from common.bundle.schema import MAX_SHARDS, BundleError, sha256_hex
from common.bundle.store import listed_objects, read_shard_results, write_quarantine_reason
from common.bundle.usage import served_usage
from common.workflow import MAX_MESSAGE, BundleRef, FailureReason
from lambdas.events import Failure
from lambdas.runtime import client, logger, metrics, publish, tracer, transient_aws_errors

MAP_FAILED = "States.ExceedToleratedFailureThreshold"
_CODES = {"States.Timeout": "timeout", "States.HeartbeatTimeout": "heartbeat_timeout", "ShardFailed": "endpoint_failed"}


def _as_dict(text: Any) -> dict[str, Any] | None:
    if isinstance(text, dict):
        return text
    try:
        value = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _code(error: str) -> str:
    return _CODES.get(error, error.lower())


def reason_of(failure: Failure) -> FailureReason:
    """Unwrap what Step Functions hands over (a Lambda error payload, the Map iteration's wrapper naming the
    shard, our own reason record) into one flat reason."""
    reason = FailureReason(
        failure.stage, _code(failure.error), failure.cause[:MAX_MESSAGE], error=failure.error, field=None
    )
    layer = _as_dict(failure.cause)
    for _ in range(4):  # the nesting is at most: Map wrapper → Lambda error payload → reason record
        if layer is None:
            break
        if "errorMessage" in layer:  # a Lambda function's error
            error = str(layer.get("errorType") or reason.error)
            reason = replace(reason, error=error, code=_code(error), message=str(layer["errorMessage"])[:MAX_MESSAGE])
            layer = _as_dict(layer["errorMessage"])
        elif "error" in layer and "cause" in layer:  # a failed Map iteration, named by its shard
            error, shard = str(layer["error"]), layer.get("shard")
            message = str(layer["cause"])[:MAX_MESSAGE]
            reason = replace(reason, error=error, code=_code(error), message=message, shard=shard)
            layer = _as_dict(layer["cause"])
        else:  # a reason record of this workflow's own: what it says wins
            own = FailureReason.from_dict(layer)
            if own is not None:
                reason = replace(reason, **{k: v for k, v in own.to_dict().items() if v is not None})
            break
    return reason


def failed_shard(failure: Failure) -> Failure:
    """A failed Map run's first failed child execution, as the failure to record; the failure itself when it is
    not a map run's, or when no failed child can be found (the record then says what the Map said)."""
    if failure.error != MAP_FAILED or not failure.execution:
        return failure
    sfn = client("stepfunctions")
    with transient_aws_errors():
        for run in sfn.list_map_runs(executionArn=failure.execution).get("mapRuns", []):
            failed = sfn.list_executions(mapRunArn=run["mapRunArn"], statusFilter="FAILED", maxResults=1)
            for child in failed.get("executions", []):
                described = sfn.describe_execution(executionArn=child["executionArn"])
                error, cause = str(described.get("error") or failure.error), str(described.get("cause") or "")
                return replace(failure, error=error, cause=cause)
    logger.warning("the map run failed but no failed child execution was found", extra={"execution": failure.execution})
    return failure


def record_quarantine(bundle: BundleRef, reason: FailureReason, execution: str | None, **extra: Any) -> dict[str, Any]:
    """Write the reason record under ``quarantine/<owner>/<bundle id>/`` (the inbox objects stay, and are listed
    in it), then publish "Bundle Quarantined": what every quarantine of a bundle does, whoever finds the failure."""
    s3, layout = client("s3"), bundle.layout
    with transient_aws_errors():
        kept = [obj["Key"] for obj in listed_objects(s3, layout.request_prefix(bundle.bundle_id))]
        record = {
            **reason.to_dict(),
            **extra,
            "execution": execution,
            "manifest": str(bundle.manifest_uri),
            "inbox_objects": kept,
        }
        written = write_quarantine_reason(s3, layout, bundle.bundle_id, record)
    detail = _announced(bundle, execution, written.sha256, reason.stage, reason.shard, reason.code)
    publish("Bundle Quarantined", detail)
    # The log names no owner (nor its folders): the bundle id and execution say which bundle.
    logger.warning("bundle quarantined", extra={k: detail[k] for k in ("bundle_id", "execution", "stage", "code")})
    metrics.add_metric(name="BundlesQuarantined", unit=MetricUnit.Count, value=1)
    return detail


def _announced(
    bundle: BundleRef, execution: str | None, sha256: str, stage: Any, shard: Any, code: Any
) -> dict[str, Any]:
    """The "Bundle Quarantined" event's detail: where the record is and its sha256, which the recorder checks."""
    return {
        "owner": bundle.owner,
        "bundle_id": bundle.bundle_id,
        "execution": execution,
        "reason_uri": str(bundle.layout.quarantine_reason(bundle.bundle_id)),
        "reason_sha256": sha256,
        "stage": stage,
        "shard": shard,
        "code": code,
    }


def announce_quarantine(bundle: BundleRef, record: dict[str, Any], body: bytes) -> None:
    """Announce a record already written (``body``, as it lies), for one whose announcement may have failed."""
    detail = _announced(
        bundle, record.get("execution"), sha256_hex(body), record.get("stage"), record.get("shard"), record.get("code")
    )
    publish("Bundle Quarantined", detail)


def served_before(bundle: BundleRef) -> dict[str, Any]:
    """The time the servers reported for the bundle's shards that had run (their results recorded), as the
    quarantine record keeps it: the owner is billed for them (audit/usage.py). Nothing when none had run, or when a
    record cannot be read: the quarantine itself never waits on it."""
    try:
        with transient_aws_errors():
            results = read_shard_results(client("s3"), bundle.layout, bundle.bundle_id, range(MAX_SHARDS))
    except BundleError as error:
        logger.warning("the served shards' time is unreadable", extra={"field": error.field})
        return {}
    return {"usage": served_usage(results).to_dict()} if results else {}


def quarantine(failure: Failure) -> dict[str, Any]:
    with transient_aws_errors():
        reason = reason_of(failed_shard(failure))
    return record_quarantine(failure.bundle, reason, failure.execution, **served_before(failure.bundle))


@logger.inject_lambda_context(correlation_id_path="bundle.bundle_id")
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return quarantine(Failure.from_dict(event))
