"""Heartbeats for the shards the endpoint is working on (run on a schedule).

An asynchronous endpoint says nothing until it answers, so the shard wait's HeartbeatSeconds is kept alive here
while the endpoint serving the shard is in service; a shard whose endpoint is gone or failed is failed at once
(``EndpointUnavailable``) instead of waiting for its timeout."""

from __future__ import annotations

import re
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit, single_metric
from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.exceptions import ClientError

from common.aws import is_missing
from common.workflow import FailureReason, WaitingShard, waiting_shards
from lambdas.runtime import METRICS_NAMESPACE, client, ended_waits, logger, metrics, setting, tracer

_ALIVE = frozenset({"InService", "Updating", "SystemUpdating"})
VERSION_ENDPOINT = re.compile(r"^-v[0-9]+$")  # what follows the family in a served version's endpoint name


def endpoint_status(endpoint: str) -> str | None:
    """The endpoint's status; ``"Deleted"`` when SageMaker says it does not exist; None when SageMaker did not
    answer (throttling, a fault, a refusal): the round then neither beats nor fails its shards, which wait for the
    next round (their HeartbeatSeconds spans several)."""
    try:
        return str(client("sagemaker").describe_endpoint(EndpointName=endpoint)["EndpointStatus"])
    except ClientError as error:
        if is_missing(error):
            return "Deleted"
        logger.warning(
            "endpoint status unknown this round", extra={"code": error.response.get("Error", {}).get("Code", "")}
        )
        return None


def beat(table: str) -> dict[str, int]:
    sfn, dynamodb = client("stepfunctions"), client("dynamodb")
    counts = {"heartbeats": 0, "failed": 0, "stale": 0, "unknown": 0}
    statuses: dict[str, str | None] = {}
    for shard in waiting_shards(dynamodb, table):
        token = shard.task_token
        if shard.endpoint not in statuses:
            statuses[shard.endpoint] = endpoint_status(shard.endpoint)
        status = statuses[shard.endpoint]
        if status is None:
            counts["unknown"] += 1
            continue
        try:
            if status in _ALIVE:
                sfn.send_task_heartbeat(taskToken=token)
                counts["heartbeats"] += 1
                continue
            message = f"endpoint {shard.endpoint} is {status}"
            cause = FailureReason("infer", "endpoint_unavailable", message, shard=shard.shard_index)
            sfn.send_task_failure(taskToken=token, error="EndpointUnavailable", cause=cause.to_json())
            counts["failed"] += 1
        except ended_waits(sfn):
            counts["stale"] += 1
        dynamodb.delete_item(TableName=table, Key=WaitingShard.key_of(shard.inference_id))
    logger.info("heartbeat round", extra=counts)
    metrics.add_metric(name="ShardHeartbeats", unit=MetricUnit.Count, value=counts["heartbeats"])
    return counts


def count_instances(family: str) -> dict[str, int]:
    """Each served version's endpoint (``<family>-v<version>``) → its instance count now, each published as the
    dashboard's ``EndpointInstances`` (dimension EndpointName); an endpoint SageMaker does not describe is left out."""
    sagemaker = client("sagemaker")
    counts: dict[str, int] = {}
    pages = sagemaker.get_paginator("list_endpoints").paginate(NameContains=f"{family}-v")
    for summary in (e for page in pages for e in page.get("Endpoints", [])):
        name = str(summary["EndpointName"])
        if not VERSION_ENDPOINT.match(name.removeprefix(family)):
            continue
        try:
            variants = sagemaker.describe_endpoint(EndpointName=name).get("ProductionVariants") or []
        except ClientError:
            continue
        counts[name] = sum(int(v.get("CurrentInstanceCount", 0)) for v in variants)
        with single_metric(
            name="EndpointInstances", unit=MetricUnit.Count, value=counts[name], namespace=METRICS_NAMESPACE
        ) as metric:
            metric.add_dimension(name="EndpointName", value=name)
    return counts


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, int]:
    counts = beat(setting("WORKFLOW_TABLE"))
    try:
        counts["endpoints"] = len(count_instances(setting("ENDPOINT_NAME")))
    except ClientError as error:  # the dashboard's figure waits for the next round; the heartbeats went out
        logger.warning(
            "instance counts unknown this round", extra={"code": error.response.get("Error", {}).get("Code")}
        )
    return counts
