"""The audit log's chain, the recorder's appends (moto DynamoDB) and the report's consistency checks."""

from __future__ import annotations

import importlib
import json
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from types import ModuleType
from typing import Any

import pytest
from moto import mock_aws

from audit import checks
from common import aws
from common.audit_log import AuditRecord, chain_problems, read_chain

T0 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
PACKAGE = "arn:aws:sagemaker:us-east-1:000000000000:model-package/fhe-models/3"


def _chain(count: int) -> list[AuditRecord]:
    records: list[AuditRecord] = []
    for n in range(count):
        records.append(AuditRecord.next_after(records[-1] if records else None, {"kind": "test", "n": n}))
    return records


def test_an_intact_chain_has_no_problem_and_each_kind_of_tampering_is_named() -> None:
    records = _chain(5)
    assert [r.seq for r in records] == [1, 2, 3, 4, 5] and chain_problems(records) == []
    altered = [
        *records[:2],
        replace(records[2], body_json=records[2].body_json.replace('"n":2', '"n":7')),
        *records[3:],
    ]
    assert chain_problems(altered) == ["record 3 was altered (its digest does not match its content)"]
    removed = [*records[:2], *records[3:]]
    assert "record 3 is missing (the next one is 4)" in chain_problems(removed)
    forged = AuditRecord.next_after(records[1], {"kind": "test", "n": 99})  # a rewritten record 3, digest recomputed
    problems = chain_problems([*records[:2], forged, *records[3:]])
    assert problems == ["record 4 does not follow the record before it (previous digest differs)"]


def _bundle(**changes: Any) -> dict[str, Any]:
    bundle = {
        "owner": "clinic-a",
        "bundle_id": "b-1",
        "status": "SUCCEEDED",
        "outcome": "delivered",
        "ended": (T0 + timedelta(seconds=20)).isoformat(),
        "model_package_arn": PACKAGE,
        "model_package_version": 3,
        "stages": {
            "InferShards": {
                "started": (T0 + timedelta(seconds=5)).isoformat(),
                "ended": (T0 + timedelta(seconds=15)).isoformat(),
            }
        },
        "result_model_package_arn": PACKAGE,
        "result_versions": {"python": "3.11.7", "concrete_python": "2.10.0", "concrete_ml": "1.9.0"},
        "input_objects": [],
        "output_objects": [],
    }
    changed = {**bundle, **changes}
    return {**changed, "bundle": f"{changed['owner']}/{changed['bundle_id']}"}


def _decision(seq: int, seconds: int, status: str) -> dict[str, Any]:
    return {"seq": seq, "time": (T0 + timedelta(seconds=seconds)).isoformat(), "package_arn": PACKAGE, "status": status}


REGISTRY = {PACKAGE: {"status": "Approved", "last_modified": T0.isoformat()}}


def test_serving_is_checked_against_the_approval_at_that_time() -> None:
    approved_before = [_decision(1, 0, "Approved")]
    assert checks.served_while_approved([_bundle()], approved_before, REGISTRY).ok
    # Rejected while its shards were being served: named, with the bundle, the package and when.
    rejected_during = [*approved_before, _decision(2, 10, "Rejected")]
    registry = {PACKAGE: {"status": "Rejected", "last_modified": (T0 + timedelta(seconds=10)).isoformat()}}
    [failure] = checks.served_while_approved([_bundle()], rejected_during, registry).failures
    assert "bundle clinic-a/b-1" in failure and PACKAGE in failure and "Rejected" in failure
    # Rejected while served, the revocation stopping it (quarantined, no result): served while Approved only.
    stopped = _bundle(status="FAILED", outcome="quarantined", quarantine={"stage": "infer", "code": "model_revoked"})
    assert checks.served_while_approved([stopped], rejected_during, registry).ok
    # Rejected after the bundle was served: fine.
    rejected_after = [*approved_before, _decision(2, 30, "Rejected")]
    assert checks.served_while_approved([_bundle()], rejected_after, registry).ok
    # Approved only after serving began: the package was still pending when it served.
    late = [_decision(1, 8, "Approved")]
    [failure] = checks.served_while_approved([_bundle()], late, REGISTRY).failures
    assert "PendingManualApproval" in failure
    # No decision on record, but the registry shows a change before serving: that counts.
    assert checks.served_while_approved([_bundle()], [], REGISTRY).ok
    # A bundle that never reached the endpoint is not judged.
    assert checks.served_while_approved([_bundle(stages={})], late, REGISTRY).ok


def test_result_versions_and_model_must_match() -> None:
    model = {PACKAGE: {"python": "3.11.9", "concrete_python": "2.10.0", "concrete_ml": "1.9.0"}}
    assert checks.result_versions_match_model([_bundle()], model).ok  # Python agrees on major.minor
    other = {PACKAGE: {**model[PACKAGE], "concrete_ml": "1.8.0"}}
    [failure] = checks.result_versions_match_model([_bundle()], other).failures
    assert "concrete_ml 1.9.0" in failure and "1.8.0" in failure
    wrong_model = _bundle(result_model_package_arn=PACKAGE.replace("/3", "/2"))
    assert "the result names" in checks.result_versions_match_model([wrong_model], model).failures[0]


def test_every_inbox_manifest_needs_a_result_or_a_quarantine_record() -> None:
    manifests = [
        {"bundle": f"clinic-a/{name}", "dropped": T0.isoformat(), "result": result, "quarantine": quarantine}
        for name, result, quarantine in [("done", True, False), ("bad", False, True), ("busy", False, False)]
    ]
    # Another owner's bundle of the same id as a running one is not running.
    manifests += [{"bundle": "clinic-b/busy", "dropped": T0.isoformat(), "result": False, "quarantine": False}]
    check = checks.inbox_accounted_for(manifests, [_bundle(bundle_id="busy", status="RUNNING")])
    assert len(check.failures) == 1 and "bundle clinic-b/busy" in check.failures[0]
    assert check.notes == ["bundle clinic-a/busy is still running"]


def test_a_record_changed_after_it_was_written_or_never_recorded_is_named() -> None:
    body = {"kind": "bundle_completed", "subject": "clinic-a/b-1", "detail": {"result_manifest_sha256": "a" * 64}}
    records = [AuditRecord.next_after(None, body)]
    assert checks.audit_log_unaltered(records, [_bundle()], {"clinic-a/b-1": {"result_manifest": "a" * 64}}).ok
    [failure] = checks.audit_log_unaltered(
        records, [_bundle()], {"clinic-a/b-1": {"result_manifest": "b" * 64}}
    ).failures
    assert "b-1" in failure and "altered" in failure and "audit record 1" in failure
    [failure] = checks.audit_log_unaltered([], [_bundle()], {"clinic-a/b-1": {"result_manifest": "a" * 64}}).failures
    assert "no record" in failure


def test_ciphertext_objects_must_match_their_manifests() -> None:
    good = {"uri": "s3://b/inbox/clinic-a/b-1/shards/00000.fhe", "declared_sha256": "a" * 64, "sha256": "a" * 64}
    assert checks.objects_match_manifests([_bundle(input_objects=[good])]).ok
    swapped = {**good, "sha256": "c" * 64}
    [failure] = checks.objects_match_manifests([_bundle(input_objects=[swapped])]).failures
    assert "00000.fhe" in failure and "c" * 64 in failure


# ---- the recorder ----------------------------------------------------------------------------------------------


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[ModuleType, Any]]:
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    for key, value in {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "WORKFLOW_TABLE": "workflow",
        "AUDIT_TABLE": "audit",
        "POWERTOOLS_IDEMPOTENCY_DISABLED": "1",  # the appends themselves are under test here
    }.items():
        monkeypatch.setenv(key, value)
    with mock_aws():
        dynamodb = aws.session().resource("dynamodb")
        table = dynamodb.create_table(
            TableName="audit",
            KeySchema=[{"AttributeName": "chain", "KeyType": "HASH"}, {"AttributeName": "seq", "KeyType": "RANGE"}],
            AttributeDefinitions=[
                {"AttributeName": "chain", "AttributeType": "S"},
                {"AttributeName": "seq", "AttributeType": "N"},
            ],
            BillingMode="PAY_PER_REQUEST",
        )
        module = importlib.import_module("lambdas.record")
        module.audit_table.cache_clear()
        yield module, table
        module.audit_table.cache_clear()


def _event(detail_type: str, detail: dict[str, Any], source: str = "fhe.batch-inference") -> dict[str, Any]:
    return {
        "version": "0",
        "id": f"event-{detail_type}-{json.dumps(detail, sort_keys=True)}"[:60],
        "detail-type": detail_type,
        "source": source,
        "account": "000000000000",
        "time": "2026-11-22T10:00:00Z",
        "region": "us-east-1",
        "resources": [],
        "detail": detail,
    }


def test_recorder_chains_outcomes_and_approvals_and_survives_a_lost_race(
    recorder: tuple[ModuleType, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from aws_lambda_powertools.utilities.data_classes import EventBridgeEvent

    record, table = recorder
    completed = _event(
        "Bundle Completed", {"owner": "clinic-a", "bundle_id": "b-1", "result_manifest_sha256": "a" * 64}
    )
    approval = _event(
        "Model Package Approval",
        {"ModelPackageArn": PACKAGE, "ModelApprovalStatus": "Approved", "InferenceSpecification": {"big": 1}},
        source="fhe.model-registry",
    )
    native = _event(
        "SageMaker Model Package State Change",
        {"ModelPackageArn": PACKAGE, "ModelApprovalStatus": "Rejected"},
        source="aws.sagemaker",
    )
    for event in (completed, approval):
        record.append(entry={"event_id": event["id"], "body": record.record_body(EventBridgeEvent(event))})
    # Another writer appends between this writer's read and its write: the conditional put refuses, it re-reads.
    stale = record.last_record(table)
    reads = iter([stale])
    monkeypatch.setattr(record, "last_record", lambda t: next(reads, None) or read_last(t))
    table.put_item(Item=AuditRecord.next_after(stale, {"kind": "other writer", "subject": "x"}).to_item())
    record.append(entry={"event_id": native["id"], "body": record.record_body(EventBridgeEvent(native))})

    chained = list(read_chain(table))
    assert [r.seq for r in chained] == [1, 2, 3, 4] and chain_problems(chained) == []
    kinds = [(r.body["kind"], r.body["subject"]) for r in chained]
    assert kinds == [
        ("bundle_completed", "clinic-a/b-1"),
        ("approval", PACKAGE),
        ("other writer", "x"),
        ("approval", PACKAGE),
    ]
    assert "InferenceSpecification" not in chained[1].body["detail"], "only the decision is kept"
    assert chained[3].body["detail"]["ModelApprovalStatus"] == "Rejected"
    with pytest.raises(Exception, match="does not record"):
        record.record_body(EventBridgeEvent(_event("Bundle Started", {"bundle_id": "b-1"})))
    with pytest.raises(Exception, match="without its owner"):
        record.record_body(EventBridgeEvent(_event("Bundle Completed", {"bundle_id": "b-1"})))


def read_last(table: Any) -> AuditRecord | None:
    from common.audit_log import last_record

    return last_record(table)


def test_an_owners_estimate_is_shown_as_written_or_said_to_be_unusable(s3: Any) -> None:
    """The owner writes estimate.json: the audit reads it with a limit and shows only its known fields."""
    from audit.collect import MAX_ESTIMATE_BYTES, estimate_shown
    from common.bundle_store import BundleLayout
    from tests.unit.conftest import UNIT_BUCKET, UNIT_OWNER

    uri = BundleLayout(UNIT_BUCKET, UNIT_OWNER).estimate("b-1")
    assert estimate_shown(s3, uri) is None
    good = {"seconds": 12.5, "cost": 0.01, "currency": "USD", "prices_as_of": "2025-10-01", "extra": "dropped"}
    s3.put_object(Bucket=uri.bucket, Key=uri.key, Body=json.dumps(good).encode())
    shown = estimate_shown(s3, uri)
    assert shown is not None and shown["seconds"] == 12.5 and "extra" not in shown
    for body in (b"not json", json.dumps({"seconds": "soon"}).encode(), b" " * (MAX_ESTIMATE_BYTES + 1)):
        s3.put_object(Bucket=uri.bucket, Key=uri.key, Body=body)
        assert estimate_shown(s3, uri) == {"unusable": str(uri)}
