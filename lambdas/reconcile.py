"""Every dropped bundle ends with a result or a quarantine record, whatever fails: this function records the ends
that no step of the workflow could record itself.

It takes, through SQS:
- Step Functions' own "Execution Status Change" events for the workflow's executions that ended FAILED, TIMED_OUT or
  ABORTED (EventBridge → the outcome queue, and its dead-letter queue). An execution that the Quarantine step ended
  has its record (the record names the execution) and is left alone; one that ended otherwise (the Quarantine step
  itself failed, an operator stopped it, it ran past its time limit) gets its record here: for a failed Quarantine
  step, the reason that step was given, read from the execution's history.
- What the dead-letter queues hold: a manifest event whose start failed past its retries (quarantined as
  ``start_failed``: no execution ran), a shard task the invoke function could never send (its wait is failed as
  ``ShardNotSent``, so the bundle's own Quarantine step records it), and an endpoint notification the notify
  function could never complete (the shard's wait is failed as ``NotificationLost``).

On its schedule it sweeps too: the workflow's executions that ended without success in the last day, each checked
as its event would have been, since EventBridge delivers status events at least once but not always.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from common.aws import is_missing
from common.bundle.schema import BundleError
from common.bundle.store import get_bytes
from common.workflow import (
    BUNDLE_TIME_LIMIT_SECONDS,
    BundleRef,
    EventError,
    FailureReason,
    WaitingShard,
    as_object,
)
from lambdas.events import Failure, ShardTask
from lambdas.notify import InferenceResult
from lambdas.quarantine import announce_quarantine, failed_shard, reason_of, record_quarantine, served_before
from lambdas.runtime import client, fail_wait, logger, metrics, setting, tracer, transient_aws_errors
from lambdas.start import bundle_of

processor = BatchProcessor(event_type=EventType.SQS)
STATUS_CHANGE = "Step Functions Execution Status Change"
QUARANTINE_STATE = "Quarantine"  # the state machine's state that records a failed bundle
QUARANTINE_FAILED = "QuarantineFailed"  # the error of an execution whose Quarantine step failed
MAX_RECORD_BYTES = 1024 * 1024
SWEEP_LOOKBACK = timedelta(days=1)

# How an execution that ended without a result is told to its owner, when no step recorded why.
_ENDED = {
    "FAILED": (
        "execution_failed",
        "the workflow failed ({error}) before it could record why; drop the manifest again, and if it fails again "
        "ask the operators, who have the execution's history",
    ),
    "TIMED_OUT": (
        "execution_timed_out",
        "the bundle ran past the workflow's time limit; drop it again with smaller or fewer shards",
    ),
    "ABORTED": ("execution_stopped", "the bundle's execution was stopped before it ended; drop the manifest again"),
}


@dataclass(frozen=True)
class EndedExecution:
    """A workflow execution that ended without success: which bundle, how it ended."""

    arn: str
    status: str
    error: str
    bundle: BundleRef | None  # None for a Distributed Map's child execution (one shard's), which is not a bundle's

    @classmethod
    def from_description(cls, described: dict[str, Any]) -> EndedExecution:
        started = json.loads(described.get("input") or "{}")
        is_bundle = isinstance(started, dict) and "shard_index" not in started and "bundle" in started
        return cls(
            str(described["executionArn"]),
            str(described["status"]),
            str(described.get("error") or ""),
            BundleRef.from_dict(started["bundle"]) if is_bundle else None,
        )


def current_record(bundle: BundleRef) -> tuple[dict[str, Any] | None, bytes]:
    """The bundle's quarantine record as it is now (None when there is none), and its bytes."""
    uri = bundle.layout.quarantine_reason(bundle.bundle_id)
    s3 = client("s3")
    try:
        with transient_aws_errors():
            body: bytes = get_bytes(s3, uri, field="quarantine", limit=MAX_RECORD_BYTES)
    except BundleError as error:
        if error.code == "missing_object":
            return None, b""
        raise
    try:
        record = json.loads(body)
    except ValueError:
        return None, body
    return (record if isinstance(record, dict) else None), body


def dropped_etag(bundle: BundleRef) -> str | None:
    """The ETag of the bundle's manifest as it lies in the inbox now (None when it is gone)."""
    uri = bundle.manifest_uri
    try:
        with transient_aws_errors():
            head = client("s3").head_object(Bucket=uri.bucket, Key=uri.key)
    except client("s3").exceptions.ClientError as error:
        if is_missing(error):
            return None
        raise
    return str(head.get("ETag", "")).strip('"')


def quarantine_input(execution: str) -> dict[str, Any] | None:
    """What the Quarantine state was given in ``execution``, if it was entered: the failure it had to record."""
    pages = (
        client("stepfunctions")
        .get_paginator("get_execution_history")
        .paginate(executionArn=execution, reverseOrder=True)
    )
    for event in (e for page in pages for e in page["events"]):
        entered = event.get("stateEnteredEventDetails") or {}
        if entered.get("name") == QUARANTINE_STATE:
            data = json.loads(entered.get("input") or "{}")
            return data if isinstance(data, dict) else None
    return None


def reason_for(ended: EndedExecution) -> FailureReason:
    if ended.status == "FAILED":
        given = quarantine_input(ended.arn)
        if given is not None:
            # The Quarantine step failed: what it was to record is the owner's reason. Its input is the state's
            # before the step's Parameters added the execution, which finding a failed shard needs.
            return reason_of(failed_shard(replace(Failure.from_dict(given), execution=ended.arn)))
    code, message = _ENDED.get(ended.status, _ENDED["FAILED"])
    return FailureReason("workflow", code, message.format(error=ended.error or "no error named"), error=ended.error)


def account_for(ended: EndedExecution) -> str:
    """Record the end of ``ended`` unless its record is there; says what was done."""
    bundle = ended.bundle
    if bundle is None:
        return "not_a_bundle"
    record, body = current_record(bundle)
    if record is not None and record.get("execution") == ended.arn:
        if ended.error == QUARANTINE_FAILED:
            # The step wrote the record and failed after it, announcing it or not: announced now. (The recorder
            # may chain it twice; never not at all.)
            announce_quarantine(bundle, record, body)
            return "announced"
        return "recorded"
    if dropped_etag(bundle) != bundle.etag:
        # The bundle was dropped again since this execution ran: what its owner waits for is the newer drop's end,
        # which this one's must not overwrite.
        return "superseded"
    with transient_aws_errors():
        reason = reason_for(ended)
    record_quarantine(
        bundle, reason, ended.arn, execution_status=ended.status, recorded_by="reconcile", **served_before(bundle)
    )
    metrics.add_metric(name="BundlesReconciled", unit=MetricUnit.Count, value=1)
    return "quarantined"


def execution_ended(event: dict[str, Any]) -> str:
    detail = as_object(event.get("detail"), "the status change's detail")
    if detail.get("status") not in _ENDED:
        return "ignored"
    if detail.get("input") is None:  # left out of the event when large: read it from the execution
        with transient_aws_errors():
            detail = client("stepfunctions").describe_execution(executionArn=detail["executionArn"])
    return account_for(EndedExecution.from_description(detail))


def start_failed(event: dict[str, Any]) -> str:
    """A manifest's S3 event that the start function could not handle past its retries: no execution ran."""
    bundle = bundle_of(event)
    if bundle is None:
        return "ignored"
    sfn = client("stepfunctions")
    arn = f"{setting('STATE_MACHINE_ARN').replace(':stateMachine:', ':execution:')}:{bundle.execution_name}"
    try:
        with transient_aws_errors():
            sfn.describe_execution(executionArn=arn)
        return "started"  # it did start after all: its own end accounts for it
    except sfn.exceptions.ExecutionDoesNotExist:
        pass
    message = "the workflow could not start this bundle; drop its manifest again (fhe-client submit)"
    record_quarantine(bundle, FailureReason("start", "start_failed", message), None, manifest_etag=bundle.etag)
    return "quarantined"


def shard_not_sent(task: ShardTask) -> str:
    message = "the workflow could not send this shard to the endpoint"
    reason = FailureReason("infer", "shard_not_sent", message, shard=task.shard_index)
    return "ShardNotSent" if fail_wait(client("stepfunctions"), task.task_token, "ShardNotSent", reason) else "stale"


def notification_lost(result: InferenceResult) -> str:
    dynamodb, table = client("dynamodb"), setting("WORKFLOW_TABLE")
    key = WaitingShard.key_of(result.inference_id)
    with transient_aws_errors():
        item = dynamodb.get_item(TableName=table, Key=key, ConsistentRead=True).get("Item")
    if item is None:
        return "stale"
    waiting = WaitingShard.from_item(item)
    message = "the endpoint answered this shard, but the workflow could not read its answer"
    reason = FailureReason("infer", "notification_lost", message, shard=waiting.shard_index)
    outcome = (
        "NotificationLost"
        if fail_wait(client("stepfunctions"), waiting.task_token, "NotificationLost", reason)
        else "stale"
    )
    with transient_aws_errors():
        dynamodb.delete_item(TableName=table, Key=key)
    return outcome


def record_handler(record: SQSRecord) -> str:
    """One message of the outcome queue or of a dead-letter queue, told apart by its shape."""
    body = json.loads(record.body)
    if not isinstance(body, dict):
        raise EventError("a message that is not a JSON object")
    if body.get("detail-type") == STATUS_CHANGE:
        outcome = execution_ended(body)
    elif body.get("detail-type") == "Object Created":
        outcome = start_failed(body)
    elif "task_token" in body:
        outcome = shard_not_sent(ShardTask.from_dict(body))
    else:
        outcome = notification_lost(InferenceResult.from_sns_envelope(record.body))
    logger.info("reconciled", extra={"outcome": outcome})
    return outcome


def ended_executions(since: datetime) -> Iterator[EndedExecution]:
    """The executions that ended without success since ``since``. They are listed by their start, newest first:
    one that started before ``since`` may have ended after it, up to the workflow's time limit later."""
    sfn = client("stepfunctions")
    for status in _ENDED:
        pages = sfn.get_paginator("list_executions").paginate(
            stateMachineArn=setting("STATE_MACHINE_ARN"), statusFilter=status
        )
        for listed in (e for page in pages for e in page["executions"]):
            started, stopped = listed.get("startDate"), listed.get("stopDate")
            if isinstance(started, datetime) and started < since - timedelta(seconds=BUNDLE_TIME_LIMIT_SECONDS):
                break
            if isinstance(stopped, datetime) and stopped < since:
                continue
            yield EndedExecution.from_description(sfn.describe_execution(executionArn=listed["executionArn"]))


def sweep(now: datetime) -> dict[str, int]:
    counts: dict[str, int] = {}
    with transient_aws_errors():
        for ended in ended_executions(now - SWEEP_LOOKBACK):
            outcome = account_for(ended)
            counts[outcome] = counts.get(outcome, 0) + 1
    logger.info("sweep", extra=counts)
    return counts


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    if "Records" in event:
        # A record that fails goes back to its queue; the queue's age alarm says when one stays.
        return dict(process_partial_response(event=event, record_handler=record_handler, processor=processor))
    return sweep(datetime.now(UTC))
