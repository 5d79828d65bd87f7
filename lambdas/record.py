"""Append what happened to the hash-chained, signed audit log: EventBridge (bundle outcomes, approval decisions,
versions served and retired) → SQS → this function → the audit table.

An event is a claim, not a fact: whoever may put events on the bus chose its content. So an event is recorded only
when its detail type is one its source sends (``EVENT_TYPES``) and the service that did the thing confirms it:

- a bundle outcome: the result manifest or quarantine record exists at the bundle's own place in the bundle bucket
  with the sha256 the event names, and the execution it names is one of this deployment's workflow, running that
  bundle; what the record keeps is read from that object, not from the event;
- an approval decision: the model package is in the registry, of the deployment's group, with the status the event
  claims; what was decided, when and by whom is the registry's (DescribeModelPackage: LastModifiedBy), and an
  event that names a decider of its own is refused;
- a version served: its endpoint exists, is the deployment's endpoint of that version, and serves the package the
  event names; a version retired: its endpoint is gone or going;
- a batch owner's data erased: no object version is left under any of the owner's folders of the bundle bucket (an
  export is kept as its exporter's counts and index digest: nothing here can see a copy made elsewhere).

An event that fails a check is not dropped: a ``refused_event`` record names its source, detail type and the reason
(never its detail), so the audit report lists it. A check that cannot be made now (throttling, a service fault, a
permission missing) fails the message, which the queue delivers again.

Each event is recorded once (Powertools idempotency on the EventBridge event id), and a record is only written
as the successor of the current last one (a conditional put on its sequence number): a writer that loses a race
reads the new last record and tries again, so the chain never forks. Each record is signed (KMS, the deployment's
audit signing key) before it is written.
"""

from __future__ import annotations

import hashlib
import json
import re
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
    APPROVAL_TYPES,
    BUNDLE_COMPLETED,
    BUNDLE_KINDS,
    DECIDED_BY,
    EVENT_TYPES,
    OFFBOARDING_KINDS,
    OWNER_ERASED,
    SERVING_KINDS,
    SIGNING_ALGORITHM,
    VERSION_SERVED,
    AuditRecord,
    approval_body,
    last_record,
    refused_body,
)
from common.aws import is_missing
from common.bundle.enclave_manifest import parse_either_manifest
from common.bundle.manifest import package_ref
from common.bundle.schema import BUNDLE_ID, MAX_MANIFEST_BYTES, BundleError, utc_now
from common.bundle.store import EXPORTED_FOLDERS, OWNER_FOLDERS, BundleLayout, get_bytes, listed_objects
from common.bundle.usage import ServedUsage, parse_usage_record
from common.model_package import version_endpoint
from common.s3uri import S3Uri
from common.workflow import BundleRef, EventError, bundle_path
from lambdas.runtime import TransientError, client, logger, metrics, setting, tracer, transient_aws_errors

processor = BatchProcessor(event_type=EventType.SQS)
idempotency = IdempotencyConfig(event_key_jmespath="event_id", expires_after_seconds=30 * 24 * 3600)
persistence = DynamoDBPersistenceLayer(table_name=setting("WORKFLOW_TABLE"))
APPEND_ATTEMPTS = 20  # conditional-put races lost in a row before the message goes back to the queue
MAX_RECORD_BYTES = MAX_MANIFEST_BYTES  # a result manifest or quarantine record read to be checked
# Endpoint states in which a retired version's endpoint counts as gone.
RETIRED_STATES = frozenset({"Deleting"})
# What SageMaker answers for a name it does not have (describe calls name their resource).
NOT_FOUND_CODES = frozenset({"ValidationException", "ResourceNotFound", "ResourceNotFoundException"})


class Refused(Exception):
    """An event the recorder will not record as a fact; the reason is said without any of the event's content."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


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


def _missing(error: ClientError) -> bool:
    code = str(error.response.get("Error", {}).get("Code", ""))
    return is_missing(error) or code in NOT_FOUND_CODES


# ---- bundle outcomes -----------------------------------------------------------------------------------------


def _record_bytes(uri: S3Uri, what: str) -> bytes:
    """The object's bytes; Refused when it is not there or larger than any record the workflow writes."""
    try:
        with transient_aws_errors():  # one bounded GET: the object checked is the object read
            return get_bytes(client("s3"), uri, field=what, limit=MAX_RECORD_BYTES)
    except BundleError as error:
        if error.code == "missing_object":
            raise Refused(f"the {what} it names does not exist") from None
        raise Refused(f"the {what} it names is larger than any the workflow writes") from None


def _execution_prefix(state_machine_arn: str) -> str:
    """``arn:…:execution:<state machine name>:``: what every execution ARN of the state machine begins with."""
    head, _, name = state_machine_arn.rpartition(":stateMachine:")
    return f"{head}:execution:{name}:"


def _check_execution(execution: Any, owner: str, bundle_id: str, *, completed: bool) -> None:
    """The execution is one of this deployment's workflow, it ran this bundle, and (for a delivery) did not fail."""
    state_machine = setting("STATE_MACHINE_ARN")
    if not isinstance(execution, str) or not execution.startswith(_execution_prefix(state_machine)):
        raise Refused("the execution it names is not one of this deployment's workflow")
    sfn = client("stepfunctions")
    try:
        with transient_aws_errors():
            described = sfn.describe_execution(executionArn=execution)
    except ClientError as error:
        if str(error.response.get("Error", {}).get("Code")) in ("ExecutionDoesNotExist", "InvalidArn"):
            raise Refused("the execution it names does not exist") from None
        raise
    if described.get("stateMachineArn") != state_machine:
        raise Refused("the execution it names is not one of this deployment's workflow")
    try:
        ran = BundleRef.from_dict(json.loads(described.get("input") or "{}").get("bundle"))
        same = (ran.bucket, ran.owner, ran.bundle_id) == (setting("BUNDLE_BUCKET"), owner, bundle_id)
    except (EventError, ValueError, AttributeError):
        same = False
    if not same:
        raise Refused("the execution it names ran another bundle")
    if completed and described.get("status") not in ("RUNNING", "SUCCEEDED"):
        raise Refused(f"the execution it names did not deliver (it is {described.get('status')})")


def bundle_body(event: EventBridgeEvent, detail: dict[str, Any]) -> dict[str, Any]:
    owner, bundle_id = detail.get("owner"), detail.get("bundle_id")
    if not isinstance(owner, str) or not isinstance(bundle_id, str) or not BUNDLE_ID.match(bundle_id):
        raise Refused("it names no valid owner and bundle id")
    try:
        layout = BundleLayout(setting("BUNDLE_BUCKET"), owner)
    except ValueError:
        raise Refused("it names no valid owner and bundle id") from None
    completed = event.detail_type == BUNDLE_COMPLETED
    execution = detail.get("execution")
    # A delivery is always the workflow's; a quarantine record may also come from whoever accounts for a bundle
    # whose workflow never ran (no execution to name), and the record in the bucket is then the fact.
    if completed or execution:
        _check_execution(execution, owner, bundle_id, completed=completed)
    if completed:
        what, uri = "result manifest", layout.result_manifest(bundle_id)
        uri_field, sha_field = "result_manifest", "result_manifest_sha256"
    else:
        what, uri = "quarantine record", layout.quarantine_reason(bundle_id)
        uri_field, sha_field = "reason_uri", "reason_sha256"
    if detail.get(uri_field) != str(uri):
        raise Refused(f"the {what} it names is not the bundle's own")
    data = _record_bytes(uri, what)
    sha256 = hashlib.sha256(data).hexdigest()
    if detail.get(sha_field) != sha256:
        raise Refused(f"the {what}'s sha256 is not the one it names")
    kept: dict[str, Any] = {"owner": owner, "bundle_id": bundle_id, "execution": execution or "", uri_field: str(uri)}
    kept[sha_field] = sha256
    try:
        if completed:
            manifest = parse_either_manifest(data)
            if manifest.kind != "result" or manifest.bundle_id != bundle_id:
                raise ValueError("not this bundle's result manifest")
            kept.update(
                model_package_arn=manifest.model.package_arn,
                samples=manifest.total_samples,
                shards=len(manifest.shards),
            )
        else:
            reason = json.loads(data)
            if reason.get("owner") != owner or reason.get("bundle_id") != bundle_id:
                raise ValueError("not this bundle's quarantine record")
            kept.update({k: reason.get(k) for k in ("stage", "shard", "code")})
            if "usage" in reason:  # the time of the shards that ran before it was quarantined
                kept["usage"] = ServedUsage.from_dict(reason["usage"]).to_dict()
    except (ValueError, AttributeError, RecursionError):
        raise Refused(f"the {what} it names is not one the workflow writes") from None
    if completed and "usage_record" in detail:
        kept["usage"] = _usage(layout, bundle_id, detail).to_dict()
    return _event_body(event, BUNDLE_KINDS[event.detail_type], bundle_path(owner, bundle_id), kept)


def _usage(layout: BundleLayout, bundle_id: str, detail: dict[str, Any]) -> ServedUsage:
    """A delivery's usage record, read from where Assemble writes it and checked against the sha256 the event names:
    how long its servers worked on it, what usage per owner bills."""
    uri = layout.usage_record(bundle_id)
    if detail.get("usage_record") != str(uri):
        raise Refused("the usage record it names is not the bundle's own")
    data = _record_bytes(uri, "usage record")
    if detail.get("usage_sha256") != hashlib.sha256(data).hexdigest():
        raise Refused("the usage record's sha256 is not the one it names")
    try:
        return parse_usage_record(data, bundle_id)
    except (ValueError, RecursionError):
        raise Refused("the usage record it names is not one the workflow writes") from None


# ---- approval decisions ----------------------------------------------------------------------------------------


def decision_body(event: EventBridgeEvent, detail: dict[str, Any]) -> dict[str, Any]:
    if DECIDED_BY in detail:
        raise Refused("it names its own decider; who decided is the registry's to say")
    arn = detail.get("ModelPackageArn")
    try:
        group = package_ref(arn if isinstance(arn, str) else "").package_group
    except ValueError:
        raise Refused("it names no versioned model package") from None
    if group != setting("MODEL_PACKAGE_GROUP"):
        raise Refused("the package it names is not of this deployment's model package group")
    try:
        with transient_aws_errors():
            package: dict[str, Any] = client("sagemaker").describe_model_package(ModelPackageName=arn)
    except ClientError as error:
        if _missing(error):
            raise Refused("the registry has no model package of that name") from None
        raise
    status = package.get("ModelApprovalStatus")
    if detail.get("ModelApprovalStatus") != status:
        raise Refused(f"the registry's approval status of the package ({status}) is not the one it claims")
    return approval_body(package, source=event.source, event_id=event.get_id, time=event.time)


# ---- model versions served and retired -------------------------------------------------------------------------


def _served_packages(sagemaker: Any, config: dict[str, Any]) -> set[str]:
    """The model packages an endpoint configuration serves, as SageMaker describes its models."""
    packages = set()
    for variant in config.get("ProductionVariants", []):
        model = sagemaker.describe_model(ModelName=variant["ModelName"])
        for container in [model.get("PrimaryContainer") or {}, *model.get("Containers", [])]:
            if container.get("ModelPackageName"):
                packages.add(str(container["ModelPackageName"]))
    return packages


def serving_body(event: EventBridgeEvent, detail: dict[str, Any]) -> dict[str, Any]:
    endpoint, version = detail.get("endpoint"), detail.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or not isinstance(endpoint, str):
        raise Refused("it names no endpoint and version")
    if endpoint != version_endpoint(setting("ENDPOINT_NAME"), version):
        raise Refused("the endpoint it names is not this deployment's endpoint of that version")
    sagemaker = client("sagemaker")
    try:
        with transient_aws_errors():
            described: dict[str, Any] | None = sagemaker.describe_endpoint(EndpointName=endpoint)
    except ClientError as error:
        if not _missing(error):
            raise
        described = None
    kept: dict[str, Any] = {"endpoint": endpoint, "version": version}
    if event.detail_type == VERSION_SERVED:
        if described is None:
            raise Refused("the endpoint it names does not exist")
        with transient_aws_errors():
            config = sagemaker.describe_endpoint_config(EndpointConfigName=described["EndpointConfigName"])
            served = _served_packages(sagemaker, config)
        claimed = detail.get("model_package_arn")
        if claimed not in served:
            raise Refused("the endpoint it names does not serve the model package it names")
        kept.update(model_package_arn=claimed, endpoint_created=described["CreationTime"].isoformat())
        # What its instance time is priced and counted from (audit/usage.py), as SageMaker describes the endpoint.
        [variant, *_] = config.get("ProductionVariants") or [{}]
        if "InstanceType" in variant:
            kept.update(instance_type=variant["InstanceType"], initial_instances=variant.get("InitialInstanceCount", 1))
    elif described is not None and described.get("EndpointStatus") not in RETIRED_STATES:
        raise Refused(f"the endpoint it names is still there ({described.get('EndpointStatus')})")
    # Who deployed or retired a version: SageMaker keeps no record of it (CloudTrail does), so the record keeps the
    # announcer's own word, from the only role whose events:PutEvents grant allows this source.
    for field in ("by", "revoked", "quarantined", "waited_for"):
        if field in detail:
            kept[field] = detail[field]
    return _event_body(event, SERVING_KINDS[event.detail_type], endpoint, kept)


# ---- an owner's offboarding -------------------------------------------------------------------------------------

SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
MAX_COUNT = 10**12


def _count(detail: dict[str, Any], field: str) -> int:
    value = detail.get(field)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
        raise Refused(f"its {field} is not a count")
    return value


def offboarding_body(event: EventBridgeEvent, detail: dict[str, Any]) -> dict[str, Any]:
    """An owner's data erased: confirmed by the bundle bucket itself, which must hold no object version under any of
    the owner's folders; the record says when the recorder saw them empty (not the event's own time). An export:
    the bucket must hold, in the owner's outbox and quarantine folders, as many objects and bytes as the export
    says it copied; the digest of its index is the exporter's (nothing here sees the copy)."""
    owner = detail.get("owner")
    try:
        layout = BundleLayout(setting("BUNDLE_BUCKET"), str(owner))
    except ValueError:
        raise Refused("it names no valid owner") from None
    s3, kept = client("s3"), {"owner": owner}
    if event.detail_type == OWNER_ERASED:
        for top in OWNER_FOLDERS:
            folder = layout.folder(top)
            with transient_aws_errors():
                listed = s3.list_object_versions(Bucket=folder.bucket, Prefix=folder.key + "/", MaxKeys=1)
            if listed.get("Versions") or listed.get("DeleteMarkers"):
                raise Refused(f"objects remain in the owner's {top} folder")
        kept.update(
            object_versions=_count(detail, "object_versions"),
            responses=_count(detail, "responses"),
            folders=list(OWNER_FOLDERS),
            confirmed_at=utc_now(),
        )
    else:
        digest = detail.get("index_sha256")
        if not isinstance(digest, str) or not SHA256_HEX.match(digest):
            raise Refused("it names no sha256 of the export's index")
        objects, size = _count(detail, "objects"), _count(detail, "bytes")
        with transient_aws_errors():
            listed = [o for top in EXPORTED_FOLDERS for o in listed_objects(s3, layout.folder(top))]
        if (objects, size) != (len(listed), sum(int(o["Size"]) for o in listed)):
            raise Refused("the objects and bytes it says it exported are not what the owner's folders hold")
        kept.update(objects=objects, bytes=size, index_sha256=digest)
    return _event_body(event, OFFBOARDING_KINDS[event.detail_type], str(owner), kept)


# ---- the record ------------------------------------------------------------------------------------------------


def verified_body(event: EventBridgeEvent) -> dict[str, Any]:
    """What the chain keeps of an event once the service that did the thing confirmed it; Refused otherwise."""
    if event.detail_type not in EVENT_TYPES.get(event.source, frozenset()):
        raise Refused("its source does not send events of its detail type")
    detail = event.raw_event.get("detail")
    if not isinstance(detail, dict):
        raise Refused("its detail is not an object")
    if event.detail_type in BUNDLE_KINDS:
        return bundle_body(event, detail)
    if event.detail_type in APPROVAL_TYPES:
        return decision_body(event, detail)
    if event.detail_type in OFFBOARDING_KINDS:
        return offboarding_body(event, detail)
    return serving_body(event, detail)


def record_body(event: EventBridgeEvent) -> dict[str, Any]:
    """The verified body of ``event``, or the record of its refusal."""
    try:
        return verified_body(event)
    except Refused as refusal:
        logger.warning("event refused", extra={"detail_type": str(event.detail_type)[:128], "reason": refusal.reason})
        metrics.add_metric(name="AuditEventsRefused", unit=MetricUnit.Count, value=1)
        return refused_body(
            source=str(event.source),
            detail_type=str(event.detail_type),
            event_id=str(event.get_id),
            time=str(event.time),
            reason=refusal.reason,
        )


def _signed(record: AuditRecord) -> AuditRecord:
    with transient_aws_errors():
        answer = client("kms").sign(
            KeyId=setting("AUDIT_SIGNING_KEY"),
            Message=record.signed_message,
            MessageType="RAW",
            SigningAlgorithm=SIGNING_ALGORITHM,
        )
    return record.signed(answer["Signature"], str(answer["KeyId"]))


def _append(entry: dict[str, Any]) -> dict[str, Any]:
    """Chain ``entry["body"]`` after the last record, signed (``entry["event_id"]`` is the idempotency key)."""
    event_id, body, table = entry["event_id"], entry["body"], audit_table()
    for _ in range(APPEND_ATTEMPTS):
        with transient_aws_errors():
            record = _signed(AuditRecord.next_after(last_record(table), body))
            try:
                table.put_item(Item=record.to_item(), ConditionExpression="attribute_not_exists(seq)")
            except ClientError as error:
                if error.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                    raise
                continue  # another writer took this sequence number: chain after its record instead
        # The sequence number and kind only: a subject names a batch owner, which no log line may.
        logger.info("recorded", extra={"seq": record.seq, "kind": body["kind"]})
        metrics.add_metric(name="AuditRecords", unit=MetricUnit.Count, value=1)
        return {"seq": record.seq, "digest": record.digest}
    raise TransientError(f"lost {APPEND_ATTEMPTS} appends in a row for event {event_id}")


append: Callable[..., dict[str, Any]] = idempotent_function(
    _append, data_keyword_argument="entry", persistence_store=persistence, config=idempotency
)


def record_handler(record: SQSRecord) -> dict[str, Any]:
    event = EventBridgeEvent(json.loads(record.body))
    body = record_body(event)
    logger.append_keys(kind=body["kind"])
    return dict(append(entry={"event_id": event.get_id, "body": body}))


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    idempotency.register_lambda_context(context)
    return dict(process_partial_response(event=event, record_handler=record_handler, processor=processor))
