"""Start one workflow execution per dropped manifest: S3 ObjectCreated → EventBridge → SQS → this function.

Idempotent twice over: Powertools idempotency keyed on the manifest's key (owner and bundle id) + ETag (a replayed
or duplicated event returns the first answer), and an execution name made of the same (Step Functions refuses a
second one)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes import S3EventBridgeNotificationEvent
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.idempotency import (
    DynamoDBPersistenceLayer,
    IdempotencyConfig,
    idempotent_function,
)
from aws_lambda_powertools.utilities.typing import LambdaContext

from common.bundle.schema import MAX_MANIFEST_BYTES, BundleError, sha256_hex
from common.bundle.store import get_bytes, object_exists
from common.workflow import BundleRef, EventError, FailureReason, bundle_of_key
from lambdas.quarantine import record_quarantine
from lambdas.runtime import client, logger, metrics, setting, tracer, transient_aws_errors

processor = BatchProcessor(event_type=EventType.SQS)
idempotency = IdempotencyConfig(event_key_jmespath="[manifest_key, etag]", expires_after_seconds=7 * 24 * 3600)
persistence = DynamoDBPersistenceLayer(table_name=setting("WORKFLOW_TABLE"))
STAGE = "start"


def submission_of(event: dict[str, Any]) -> dict[str, str]:
    """Who dropped the manifest and when, as S3 reported it: the execution input keeps it for the audit trail."""
    s3_event = S3EventBridgeNotificationEvent(event)
    return {
        "requester": str(s3_event.detail.get("requester") or ""),
        "source_ip": s3_event.detail.source_ip_address or "",
        "time": s3_event.time,
    }


def bundle_of(event: dict[str, Any]) -> BundleRef | None:
    """The bundle an S3 "Object Created" event announces, or None when the object is not an inbox manifest."""
    s3_event = S3EventBridgeNotificationEvent(event)
    if s3_event.detail_type != "Object Created":
        raise EventError(f"not an S3 Object Created event: {s3_event.detail_type!r}")
    key = s3_event.detail.object.key
    found = bundle_of_key(key)
    if found is None:
        return None
    return BundleRef(s3_event.detail.bucket.name, found[1], key, s3_event.detail.object.etag.strip('"'))


def redropped(ref: BundleRef) -> dict[str, Any]:
    """A manifest dropped under a bundle id that already has a result. The same manifest again (an event replayed
    after the idempotency record expired) starts nothing; another manifest is refused with a quarantine record the
    owner can read, since running it would overwrite a delivered result."""
    s3 = client("s3")
    with transient_aws_errors():
        result_uri = ref.layout.result_manifest(ref.bundle_id)
        result = json.loads(get_bytes(s3, result_uri, field="result", limit=MAX_MANIFEST_BYTES))
        try:
            dropped: str | None = sha256_hex(
                get_bytes(s3, ref.manifest_uri, field="manifest", limit=MAX_MANIFEST_BYTES)
            )
        except BundleError:  # gone, or larger than any manifest: not the one the result answers either way
            dropped = None
    answered = (result.get("request") or {}).get("manifest_sha256") if isinstance(result, dict) else None
    if answered == dropped:
        logger.info("bundle already delivered for this manifest; not started again", extra={"bundle_id": ref.bundle_id})
        return {"owner": ref.owner, "bundle_id": ref.bundle_id, "started": False, "reason": "already_delivered"}
    message = (
        f"bundle {ref.bundle_id} already has a result, made from another manifest; it is not run again. "
        "Give the new bundle an id of its own (fhe-client encrypt --bundle-id)"
    )
    reason = FailureReason(STAGE, "already_delivered", message, field="bundle_id")
    record_quarantine(ref, reason, None, manifest_etag=ref.etag)
    return {"owner": ref.owner, "bundle_id": ref.bundle_id, "started": False, "reason": "already_delivered"}


def _start_bundle(bundle: dict[str, str], submitted: dict[str, str] | None = None) -> dict[str, Any]:
    ref = BundleRef.from_dict(bundle)
    sfn = client("stepfunctions")
    with transient_aws_errors():
        delivered = object_exists(client("s3"), ref.layout.result_manifest(ref.bundle_id))
    if delivered:
        return redropped(ref)
    with transient_aws_errors():
        try:
            execution = sfn.start_execution(
                stateMachineArn=setting("STATE_MACHINE_ARN"),
                name=ref.execution_name,
                input=json.dumps({"bundle": ref.to_dict(), "submitted": submitted or {}}),
            )["executionArn"]
            started = True
        except sfn.exceptions.ExecutionAlreadyExists:
            execution, started = None, False
    logger.info("bundle execution", extra={"bundle_id": ref.bundle_id, "execution": execution, "started": started})
    if started:
        metrics.add_metric(name="BundlesStarted", unit=MetricUnit.Count, value=1)
    return {"owner": ref.owner, "bundle_id": ref.bundle_id, "execution_arn": execution, "started": started}


start_bundle: Callable[..., dict[str, Any]] = idempotent_function(
    _start_bundle, data_keyword_argument="bundle", persistence_store=persistence, config=idempotency
)


def record_handler(record: SQSRecord) -> dict[str, Any] | None:
    event = json.loads(record.body)
    bundle = bundle_of(event)
    if bundle is None:
        logger.debug("not an inbox manifest; ignored")
        return None
    logger.append_keys(bundle_id=bundle.bundle_id)
    return dict(start_bundle(bundle=bundle.to_dict(), submitted=submission_of(event)))


@logger.inject_lambda_context(clear_state=True)  # keys appended per record must not leak into the next
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    idempotency.register_lambda_context(context)
    # A record that fails goes back to the queue (and after maxReceiveCount to its dead-letter queue).
    return dict(process_partial_response(event=event, record_handler=record_handler, processor=processor))
