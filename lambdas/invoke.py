"""Send one shard to the asynchronous endpoint and park the state machine's task token until it answers.

The task token is far longer than the 1024 characters of CustomAttributes, so it is kept in the workflow table
under the InferenceId this function chooses; ``notify`` finds it there when the endpoint's SNS notification
arrives. The item is written before the invocation, so a fast answer cannot miss it."""

from __future__ import annotations

import time
import uuid
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from common.bundle_store import BundleLayout
from lambdas.events import ShardTask
from lambdas.runtime import client, logger, metrics, setting, tracer, transient_aws_errors

INFERENCE_ITEM_PREFIX = "inference#"
# The endpoint's own deadlines: an invocation that cannot start in time or run in time fails with a notification.
REQUEST_TTL_SECONDS = 6 * 3600
INVOCATION_TIMEOUT_SECONDS = 3600


def inference_id(task: ShardTask) -> str:
    """Unique per attempt (a retried shard is a new invocation), readable in the endpoint's records."""
    return f"{task.bundle.bundle_id[:40]}-{task.shard_index:05d}-{uuid.uuid4().hex[:12]}"


def inference_item(task: ShardTask, invocation: str, ttl_seconds: int) -> dict[str, Any]:
    return {
        "id": {"S": INFERENCE_ITEM_PREFIX + invocation},
        "task_token": {"S": task.task_token},
        "bundle_id": {"S": task.bundle.bundle_id},
        "shard_index": {"N": str(task.shard_index)},
        "endpoint": {"S": task.endpoint},
        "expiration": {"N": str(int(time.time()) + ttl_seconds)},
    }


def invoke_shard(task: ShardTask, table: str) -> dict[str, Any]:
    layout = BundleLayout(task.bundle.bucket)
    request_uri = layout.shard_request_object(task.bundle.bundle_id, task.shard_index)
    request = layout.shard_request(task.bundle.bundle_id, task.shard_index)
    invocation = inference_id(task)
    with transient_aws_errors():
        client("s3").put_object(
            Bucket=request_uri.bucket, Key=request_uri.key, Body=request.to_json(), ContentType="application/json"
        )
        client("dynamodb").put_item(
            TableName=table, Item=inference_item(task, invocation, REQUEST_TTL_SECONDS + INVOCATION_TIMEOUT_SECONDS)
        )
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


@logger.inject_lambda_context(correlation_id_path="bundle.bundle_id")
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return invoke_shard(ShardTask.from_dict(event), setting("WORKFLOW_TABLE"))
