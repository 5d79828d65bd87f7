"""Send shards to the asynchronous endpoint and park each shard's task token until the endpoint answers.

The state machine queues each shard (SQS, with its task token); this function takes them from the queue at its
reserved concurrency, so a burst of bundles waits in the queue instead of being throttled away.

The task token is far longer than the 1024 characters of CustomAttributes, so it is kept in the workflow table
under the InferenceId this function chooses; ``notify`` finds it there when the endpoint's SNS notification
arrives. The item is written before the invocation, so a fast answer cannot miss it.

A rejected package is revoked at once (``pipelines.retirement.revoke``): the rejection is set first, then the
revocation fails every shard it finds parked. So this function checks the package *after* parking the shard and
before sending it: a shard parked before the revocation looked is failed by the revocation, one parked after it
sees the rejection here. Either way it fails as ``model_revoked`` and is never served by the revoked version."""

from __future__ import annotations

import json
import uuid
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.exceptions import ClientError

from common.model_package import revocation_message
from common.workflow import MAX_MESSAGE, FailureReason, WaitingShard
from lambdas.events import ShardTask
from lambdas.runtime import TransientError, client, fail_wait, logger, metrics, setting, tracer, transient_aws_errors

processor = BatchProcessor(event_type=EventType.SQS)

# The endpoint's own deadlines: an invocation that cannot start in time or run in time fails with a notification.
REQUEST_TTL_SECONDS = 6 * 3600
INVOCATION_TIMEOUT_SECONDS = 3600


class PackageRevoked(Exception):
    """The shard's model package is no longer Approved: the shard is not sent; the message says why."""


def inference_id(task: ShardTask) -> str:
    """Unique per attempt (a retried shard is a new invocation), readable in the endpoint's records."""
    return f"{task.bundle.bundle_id[:40]}-{task.shard_index:05d}-{uuid.uuid4().hex[:12]}"


def invoke_shard(task: ShardTask, table: str) -> dict[str, Any]:
    layout = task.bundle.layout
    request_uri = layout.shard_request_object(task.bundle.bundle_id, task.shard_index)
    request = layout.shard_request(task.bundle.bundle_id, task.shard_index)
    invocation = inference_id(task)
    with transient_aws_errors():
        client("s3").put_object(
            Bucket=request_uri.bucket, Key=request_uri.key, Body=request.to_json(), ContentType="application/json"
        )
        waiting = WaitingShard.waiting(
            task.task_token,
            task.bundle,
            task.shard_index,
            task.endpoint,
            invocation,
            REQUEST_TTL_SECONDS + INVOCATION_TIMEOUT_SECONDS,
        )
        client("dynamodb").put_item(TableName=table, Item=waiting.to_item())
        package = client("sagemaker").describe_model_package(ModelPackageName=task.model_package_arn)
        if package.get("ModelApprovalStatus") != "Approved":
            client("dynamodb").delete_item(TableName=table, Key=WaitingShard.key_of(invocation))
            note = str(package.get("ApprovalDescription") or "")
            raise PackageRevoked(revocation_message(task.model_package_arn, package["ModelPackageVersion"], note))
        client("sagemaker-runtime").invoke_endpoint_async(
            EndpointName=task.endpoint,
            InputLocation=str(request_uri),
            ContentType="application/json",
            InferenceId=invocation,
            RequestTTLSeconds=REQUEST_TTL_SECONDS,
            InvocationTimeoutSeconds=INVOCATION_TIMEOUT_SECONDS,
        )
    logger.info("shard sent", extra={"shard": task.shard_index, "inference_id": invocation})
    metrics.add_metric(name="ShardsInvoked", unit=MetricUnit.Count, value=1)
    return {"shard_index": task.shard_index, "inference_id": invocation}


def record_handler(record: SQSRecord) -> dict[str, Any] | None:
    task = ShardTask.from_dict(json.loads(record.body))
    logger.append_keys(bundle_id=task.bundle.bundle_id, shard=task.shard_index)
    try:
        return invoke_shard(task, setting("WORKFLOW_TABLE"))
    except TransientError:
        raise  # the record goes back to the queue and is tried again
    except PackageRevoked as revoked:
        # Not retried (ShardRejected): the bundle is quarantined naming the revocation.
        fail_shard(
            task,
            "ShardRejected",
            FailureReason("infer", "model_revoked", str(revoked)[:MAX_MESSAGE], shard=task.shard_index),
        )
        logger.warning("shard not sent: its model package was revoked", extra={"package": task.model_package_arn})
        return None
    except ClientError as error:
        # A refusal that retrying the same call cannot fix: fail the shard's wait now (this function holds its
        # token) so the state machine's own retry and quarantine take over, instead of waiting for a timeout.
        # The owner reads this reason: it names the call and AWS's code, never the refusal's text, which can name
        # roles and the account.
        code = error.response.get("Error", {}).get("Code", "error")
        message = f"the endpoint refused the shard's invocation ({error.operation_name}: {code})"
        fail_shard(task, "ShardFailed", FailureReason("infer", "invocation_refused", message, shard=task.shard_index))
        logger.warning("shard invocation refused", extra={"error": str(error)})
        return None


def fail_shard(task: ShardTask, error: str, reason: FailureReason) -> None:
    """End the shard's wait now (this function holds its token) with ``error`` and ``reason`` as its cause."""
    fail_wait(client("stepfunctions"), task.task_token, error, reason)


@logger.inject_lambda_context(clear_state=True)  # keys appended per record must not leak into the next
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return dict(process_partial_response(event=event, record_handler=record_handler, processor=processor))
