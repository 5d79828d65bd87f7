"""Complete a shard's wait: the endpoint's SNS notification (success or error topic → SQS) → the task token.

A Completed notification sends the output location on; a Failed one fails the task with ``ShardRejected`` when
the container refused the shard's content (a named bundle error: retrying cannot help) and ``ShardFailed``
otherwise (an instance fault, a timeout: the state machine retries with backoff)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from lambdas.events import EventError
from lambdas.invoke import INFERENCE_ITEM_PREFIX
from lambdas.runtime import client, logger, metrics, setting, tracer, transient_aws_errors

processor = BatchProcessor(event_type=EventType.SQS)
_CONTAINER_ERROR = re.compile(r'\{\\?"error\\?":.*\}')
_CODE = re.compile(r'\\?"code\\?":\s*\\?"(?P<code>[a-z_]+)\\?"')
_FIELD = re.compile(r'\\?"field\\?":\s*\\?"(?P<field>[^"\\]+)\\?"')
MAX_CAUSE = 4000


@dataclass(frozen=True)
class InferenceResult:
    """SageMaker's asynchronous inference notification (eventName InferenceResult)."""

    inference_id: str
    completed: bool
    output_location: str | None
    failure_reason: str

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
        )


def failure_of(result: InferenceResult, shard: int) -> tuple[str, dict[str, Any]]:
    """The error name and the machine-readable cause for a Failed notification."""
    container_error = _CONTAINER_ERROR.search(result.failure_reason)
    code = _CODE.search(container_error[0]) if container_error else None
    field = _FIELD.search(container_error[0]) if container_error else None
    cause = {
        "stage": "infer",
        "shard": shard,
        "inference_id": result.inference_id,
        "code": code["code"] if code else "endpoint_failed",
        "field": field["field"] if field else None,
        "message": result.failure_reason[:MAX_CAUSE],
    }
    return ("ShardRejected" if code else "ShardFailed"), cause


def complete(result: InferenceResult, table: str) -> str:
    dynamodb, sfn = client("dynamodb"), client("stepfunctions")
    key = {"id": {"S": INFERENCE_ITEM_PREFIX + result.inference_id}}
    with transient_aws_errors():
        item = dynamodb.get_item(TableName=table, Key=key, ConsistentRead=True).get("Item")
    if item is None:
        logger.warning("no waiting shard for this notification", extra={"inference_id": result.inference_id})
        return "unknown"
    token, shard = item["task_token"]["S"], int(item["shard_index"]["N"])
    logger.append_keys(bundle_id=item["bundle_id"]["S"], shard=shard, inference_id=result.inference_id)
    try:
        with transient_aws_errors():
            if result.completed:
                output: dict[str, Any] = {"shard_index": shard, "inference_id": result.inference_id}
                output["output_location"] = result.output_location or ""
                sfn.send_task_success(taskToken=token, output=json.dumps(output))
                outcome = "completed"
            else:
                error, cause = failure_of(result, shard)
                sfn.send_task_failure(taskToken=token, error=error, cause=json.dumps(cause, sort_keys=True))
                outcome = error
    except (sfn.exceptions.TaskTimedOut, sfn.exceptions.TaskDoesNotExist, sfn.exceptions.InvalidToken):
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
