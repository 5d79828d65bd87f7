"""Append what happened to the hash-chained audit log: EventBridge (bundle outcomes, approval decisions) → SQS →
this function → the audit table.

Each event is recorded once (Powertools idempotency on the EventBridge event id), and a record is only written
as the successor of the current last one (a conditional put on its sequence number): a writer that loses a race
reads the new last record and tries again, so the chain never forks.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import cache
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes import EventBridgeEvent
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.idempotency import (
    DynamoDBPersistenceLayer,
    IdempotencyConfig,
    idempotent_function,
)
from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.exceptions import ClientError

from common import aws
from common.audit_log import (
    APPROVAL_DECISION,
    BUNDLE_COMPLETED,
    BUNDLE_QUARANTINED,
    SAGEMAKER_PACKAGE_CHANGE,
    SERVING_KINDS,
    AuditRecord,
    approval_body,
    last_record,
)
from common.workflow import EventError, bundle_path
from lambdas.runtime import TransientError, logger, metrics, setting, tracer, transient_aws_errors

processor = BatchProcessor(event_type=EventType.SQS)
idempotency = IdempotencyConfig(event_key_jmespath="event_id", expires_after_seconds=30 * 24 * 3600)
persistence = DynamoDBPersistenceLayer(table_name=setting("WORKFLOW_TABLE"))
APPEND_ATTEMPTS = 20  # conditional-put races lost in a row before the message goes back to the queue

BUNDLE_KINDS = {BUNDLE_COMPLETED: "bundle_completed", BUNDLE_QUARANTINED: "bundle_quarantined"}


@cache
def audit_table() -> Any:
    return aws.session().resource("dynamodb").Table(setting("AUDIT_TABLE"))


def _event_body(event: EventBridgeEvent, kind: str, subject: str, detail: dict[str, Any]) -> dict[str, Any]:
    return {
        "kind": kind,
        "source": event.source,
        "event_id": event.get_id,
        "time": event.time,
        "subject": subject,
        "detail": detail,
    }


def record_body(event: EventBridgeEvent) -> dict[str, Any]:
    """What the chain keeps of an event: its kind, subject and detail, never anything from a bundle's content."""
    detail = dict(event.detail)
    if event.detail_type in (APPROVAL_DECISION, SAGEMAKER_PACKAGE_CHANGE):
        return approval_body(detail, source=event.source, event_id=event.get_id, time=event.time)
    if event.detail_type in BUNDLE_KINDS:
        if not isinstance(detail.get("bundle_id"), str) or not isinstance(detail.get("owner"), str):
            raise EventError(f"a {event.detail_type} event without its owner and bundle_id")
        subject = bundle_path(detail["owner"], detail["bundle_id"])
        return _event_body(event, BUNDLE_KINDS[event.detail_type], subject, detail)
    if event.detail_type in SERVING_KINDS:
        if not isinstance(detail.get("endpoint"), str) or not isinstance(detail.get("version"), int):
            raise EventError(f"a {event.detail_type} event without its endpoint and version")
        return _event_body(event, SERVING_KINDS[event.detail_type], detail["endpoint"], detail)
    raise EventError(f"the audit log does not record {event.detail_type!r} events")


def _append(entry: dict[str, Any]) -> dict[str, Any]:
    """Chain ``entry["body"]`` after the last record (``entry["event_id"]`` is the idempotency key)."""
    event_id, body, table = entry["event_id"], entry["body"], audit_table()
    for _ in range(APPEND_ATTEMPTS):
        with transient_aws_errors():
            record = AuditRecord.next_after(last_record(table), body)
            try:
                table.put_item(Item=record.to_item(), ConditionExpression="attribute_not_exists(seq)")
            except ClientError as error:
                if error.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                    raise
                continue  # another writer took this sequence number: chain after its record instead
        logger.info("recorded", extra={"seq": record.seq, "kind": body["kind"], "subject": body["subject"]})
        metrics.add_metric(name="AuditRecords", unit=MetricUnit.Count, value=1)
        return {"seq": record.seq, "digest": record.digest}
    raise TransientError(f"lost {APPEND_ATTEMPTS} appends in a row for event {event_id}")


append: Callable[..., dict[str, Any]] = idempotent_function(
    _append, data_keyword_argument="entry", persistence_store=persistence, config=idempotency
)


def record_handler(record: SQSRecord) -> dict[str, Any]:
    event = EventBridgeEvent(json.loads(record.body))
    body = record_body(event)
    logger.append_keys(subject=body["subject"], kind=body["kind"])
    return dict(append(entry={"event_id": event.get_id, "body": body}))


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    idempotency.register_lambda_context(context)
    return dict(process_partial_response(event=event, record_handler=record_handler, processor=processor))
