"""Heartbeats for the shards the endpoint is working on (run on a schedule).

An asynchronous endpoint says nothing until it answers, so the shard wait's HeartbeatSeconds is kept alive here
while the endpoint serving the shard is in service; a shard whose endpoint is gone or failed is failed at once
(``EndpointUnavailable``) instead of waiting for its timeout."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.exceptions import ClientError

from common.workflow import FailureReason, WaitingShard, waiting_shards
from lambdas.runtime import client, logger, metrics, setting, tracer

_ALIVE = frozenset({"InService", "Updating", "SystemUpdating"})


def endpoint_status(endpoint: str) -> str:
    try:
        return str(client("sagemaker").describe_endpoint(EndpointName=endpoint)["EndpointStatus"])
    except ClientError as error:
        return f"unavailable ({error.response.get('Error', {}).get('Code', 'error')})"


def beat(table: str) -> dict[str, int]:
    sfn, dynamodb = client("stepfunctions"), client("dynamodb")
    counts = {"heartbeats": 0, "failed": 0, "stale": 0}
    statuses: dict[str, str] = {}
    for shard in waiting_shards(dynamodb, table):
        token = shard.task_token
        status = statuses.setdefault(shard.endpoint, endpoint_status(shard.endpoint))
        try:
            if status in _ALIVE:
                sfn.send_task_heartbeat(taskToken=token)
                counts["heartbeats"] += 1
                continue
            message = f"endpoint {shard.endpoint} is {status}"
            cause = FailureReason("infer", "endpoint_unavailable", message, shard=shard.shard_index)
            sfn.send_task_failure(taskToken=token, error="EndpointUnavailable", cause=cause.to_json())
            counts["failed"] += 1
        except (sfn.exceptions.TaskTimedOut, sfn.exceptions.TaskDoesNotExist, sfn.exceptions.InvalidToken):
            counts["stale"] += 1
        dynamodb.delete_item(TableName=table, Key=WaitingShard.key_of(shard.inference_id))
    logger.info("heartbeat round", extra=counts)
    metrics.add_metric(name="ShardHeartbeats", unit=MetricUnit.Count, value=counts["heartbeats"])
    return counts


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, int]:
    return beat(setting("WORKFLOW_TABLE"))
