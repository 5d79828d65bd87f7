"""Complete a shard's wait: the endpoint's SNS notification (success or error topic → SQS) → the task token.

A Completed notification's answer (the shard result: where the result shard is, its size and sha256) is checked
and recorded at the shard's fixed key (``requests/<owner>/<bundle id>/results/<index>.json``), where Assemble finds it,
before the wait completes; so the execution's state never carries it. A Failed one fails the task with
``ShardRejected`` when the container refused the shard's content (a named bundle error: retrying cannot help)
and ``ShardFailed`` otherwise (an instance fault, a timeout: the state machine retries with backoff)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from common.bundle.messages import ShardResult, parse_shard_result
from common.bundle.schema import MAX_MESSAGE_BYTES, BundleError
from common.bundle.store import get_bytes, write_shard_result
from common.s3uri import S3Uri
from common.workflow import MAX_MESSAGE, EventError, FailureReason, WaitingShard
from lambdas.runtime import client, ended_waits, logger, metrics, setting, tracer, transient_aws_errors

processor = BatchProcessor(event_type=EventType.SQS)
_CONTAINER_ERROR = '{"error"'


@dataclass(frozen=True)
class InferenceResult:
    """SageMaker's asynchronous inference notification (eventName InferenceResult)."""

    inference_id: str
    completed: bool
    output_location: str | None
    failure_reason: str
    latency_seconds: float | None = None  # from SageMaker's receipt of the request to its answer

    @classmethod
    def from_sns_envelope(cls, body: str) -> InferenceResult:
        envelope = json.loads(body)
        message = json.loads(envelope["Message"]) if isinstance(envelope, dict) and "Message" in envelope else envelope
        if not isinstance(message, dict) or message.get("eventName") != "InferenceResult":
            raise EventError("not a SageMaker InferenceResult notification")
        status = message.get("invocationStatus")
        if status not in ("Completed", "Failed"):
            raise EventError(f"unknown invocationStatus {status!r}")
        response = message.get("responseParameters") or {}
        return cls(
            inference_id=str(message["inferenceId"]),
            completed=status == "Completed",
            output_location=response.get("outputLocation"),
            failure_reason=str(message.get("failureReason") or ""),
            latency_seconds=_seconds_between(message.get("receivedTime"), message.get("eventTime")),
        )


def _seconds_between(start: Any, end: Any) -> float | None:
    """Seconds from one ISO 8601 time of the notification to another; None where either is missing or unreadable."""
    try:
        seconds = (datetime.fromisoformat(str(end)) - datetime.fromisoformat(str(start))).total_seconds()
    except (TypeError, ValueError):
        return None
    return seconds if seconds >= 0 else None


def container_error(failure_reason: str) -> dict[str, Any]:
    """The serving container's own error object (``{"error": {"code", "field", "message"}}``) inside SageMaker's
    failure text, which quotes the container's answer, sometimes with its quotes escaped; empty when none."""
    decoder = json.JSONDecoder()
    for text in (failure_reason, failure_reason.replace('\\"', '"')):
        start = text.find(_CONTAINER_ERROR)
        while start != -1:
            try:
                value = decoder.raw_decode(text, start)[0]
            except ValueError:
                value = None
            if isinstance(value, dict) and isinstance(value.get("error"), dict):
                return dict(value["error"])
            start = text.find(_CONTAINER_ERROR, start + 1)
    return {}


def failure_of(result: InferenceResult, shard: int) -> tuple[str, FailureReason]:
    """The error name and the machine-readable cause for a Failed notification: a shard the container refused by
    name is not retried, any other failure is."""
    refused = container_error(result.failure_reason)
    code, field = refused.get("code"), refused.get("field")
    cause = FailureReason(
        "infer",
        code if isinstance(code, str) and code else "endpoint_failed",
        result.failure_reason[:MAX_MESSAGE],
        field=field if isinstance(field, str) else None,
        shard=shard,
        inference_id=result.inference_id,
    )
    # The container's own fault (a 500: an evaluator killed by the system, a bug) is the instance's, as much as one
    # that never answered: retried. Any code naming the shard's content is not.
    retried = cause.code in ("endpoint_failed", "internal")
    return ("ShardFailed" if retried else "ShardRejected"), cause


class UnusableAnswer(ValueError):
    """The endpoint said Completed, but its answer is not this shard's result."""


def shard_result(result: InferenceResult, waiting: WaitingShard) -> ShardResult:
    """The endpoint's answer for ``waiting``, read from the output location and checked against it."""
    if not result.output_location:
        raise UnusableAnswer("the notification names no output location")
    try:
        with transient_aws_errors():
            body = get_bytes(
                client("s3"), S3Uri.parse(result.output_location), field="output_location", limit=MAX_MESSAGE_BYTES
            )
        answer = parse_shard_result(body)
    except (BundleError, ValueError) as error:
        raise UnusableAnswer(str(error)) from None
    if (answer.bundle_id, answer.shard_index) != (waiting.bundle_id, waiting.shard_index):
        raise UnusableAnswer(
            f"answers shard {answer.shard_index} of {answer.bundle_id}, "
            f"not {waiting.shard_index} of {waiting.bundle_id}"
        )
    return answer


def record_result(result: InferenceResult, waiting: WaitingShard) -> tuple[str, FailureReason | None]:
    """Record a Completed shard's result where Assemble finds it: ("", None), or the error to fail the shard with."""
    try:
        answer = shard_result(result, waiting)
    except UnusableAnswer as error:
        message = f"an endpoint answer is unusable: {error}"[:MAX_MESSAGE]
        reason = FailureReason(
            "infer", "bad_result", message, shard=waiting.shard_index, inference_id=result.inference_id
        )
        return "ShardRejected", reason
    with transient_aws_errors():
        write_shard_result(client("s3"), waiting.layout, answer)
    # The dashboard's shard figures (infrastructure/product/monitoring.yaml): how long a shard took from SageMaker's
    # receipt to its answer, how long the instance worked on it, and how much of that was FHE.
    for name, value in (
        ("ShardLatencySeconds", result.latency_seconds),
        ("ShardServingSeconds", answer.seconds),
        ("FheSeconds", answer.fhe_seconds),
    ):
        if value is not None:
            metrics.add_metric(name=name, unit=MetricUnit.Seconds, value=value)
    return "", None


def complete(result: InferenceResult, table: str) -> str:
    dynamodb, sfn = client("dynamodb"), client("stepfunctions")
    key = WaitingShard.key_of(result.inference_id)
    with transient_aws_errors():
        item = dynamodb.get_item(TableName=table, Key=key, ConsistentRead=True).get("Item")
    if item is None:
        logger.warning("no waiting shard for this notification", extra={"inference_id": result.inference_id})
        return "unknown"
    waiting = WaitingShard.from_item(item)
    token, shard = waiting.task_token, waiting.shard_index
    logger.append_keys(bundle_id=waiting.bundle_id, shard=shard, inference_id=result.inference_id)
    try:
        with transient_aws_errors():
            error, cause = record_result(result, waiting) if result.completed else failure_of(result, shard)
            if cause is None:
                output = {"shard_index": shard, "inference_id": result.inference_id}
                sfn.send_task_success(taskToken=token, output=json.dumps(output))
                outcome = "completed"
            else:
                sfn.send_task_failure(taskToken=token, error=error, cause=cause.to_json())
                outcome = error
    except ended_waits(sfn):
        # The wait already ended (timed out, or the execution stopped): nothing is waiting for this answer.
        outcome = "stale"
    with transient_aws_errors():
        dynamodb.delete_item(TableName=table, Key=key)
    logger.info("shard answered", extra={"outcome": outcome})
    metrics.add_metric(name=f"Shards_{outcome}", unit=MetricUnit.Count, value=1)
    return outcome


def record_handler(record: SQSRecord) -> str:
    return complete(InferenceResult.from_sns_envelope(record.body), setting("WORKFLOW_TABLE"))


@logger.inject_lambda_context(clear_state=True)  # keys appended per record must not leak into the next
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return dict(process_partial_response(event=event, record_handler=record_handler, processor=processor))
