"""The audit log's chain and signatures, the recorder's checks and appends (moto: S3, Step Functions, SageMaker,
KMS, DynamoDB) and the report's consistency checks."""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from types import ModuleType
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from moto import mock_aws

from audit import checks
from audit.signatures import SigningKey, signature_problems
from common import aws
from common.audit_log import (
    REFUSED_EVENT,
    SIGNING_KEY_SPEC,
    AuditRecord,
    chain_problems,
    last_record,
    read_chain,
    user_identity,
)
from common.bundle.manifest import KeyRef, Manifest, ShardEntry, package_ref, shard_key
from common.bundle.shards import min_shard_bytes
from common.bundle.store import BundleLayout
from common.bundle.usage import ServedUsage, write_usage_record
from tests.unit.conftest import UNIT_BUCKET

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


class _Signer:
    """The recorder's signing, offline: ECDSA P-256 over each record's signed message, as KMS signs it."""

    def __init__(self) -> None:
        self.private = ec.generate_private_key(ec.SECP256R1())
        self.key = SigningKey("arn:aws:kms:us-east-1:000000000000:key/audit", self.private.public_key())

    def sign(self, record: AuditRecord) -> AuditRecord:
        return record.signed(self.private.sign(record.signed_message, ec.ECDSA(hashes.SHA256())), self.key.arn)

    def chain(self, count: int) -> list[AuditRecord]:
        records: list[AuditRecord] = []
        for n in range(count):
            records.append(
                self.sign(AuditRecord.next_after(records[-1] if records else None, {"kind": "test", "n": n}))
            )
        return records


def test_a_record_changed_after_it_was_written_or_never_recorded_is_named() -> None:
    signer = _Signer()
    body = {"kind": "bundle_completed", "subject": "clinic-a/b-1", "detail": {"result_manifest_sha256": "a" * 64}}
    records = [signer.sign(AuditRecord.next_after(None, body))]
    current: dict[str, dict[str, str | None]] = {"clinic-a/b-1": {"result_manifest": "a" * 64}}
    assert checks.audit_log_unaltered(records, [_bundle()], current, signer.key).ok
    [failure] = checks.audit_log_unaltered(
        records, [_bundle()], {"clinic-a/b-1": {"result_manifest": "b" * 64}}, signer.key
    ).failures
    assert "b-1" in failure and "altered" in failure and "audit record 1" in failure
    [failure] = checks.audit_log_unaltered([], [_bundle()], current, signer.key).failures
    assert "no record" in failure


def test_a_tail_rewritten_consistently_by_someone_who_cannot_sign_fails_naming_its_first_record() -> None:
    signer = _Signer()
    records = signer.chain(6)
    assert signature_problems(records, signer.key) == ([], [])
    # Whoever can write the table rewrites record 3 and recomputes every digest after it: the hash chain holds,
    # but no rewritten record can carry the recorder's signature (the old ones sign the old digests).
    rewritten = records[:2]
    for original in records[2:]:
        body = {**original.body, "n": 99} if original.seq == 3 else original.body
        rewritten.append(replace(AuditRecord.next_after(rewritten[-1], body), signature=original.signature))
    assert chain_problems(rewritten) == []
    failures, _ = signature_problems(rewritten, signer.key)
    assert failures == [
        "record 3 does not carry a valid signature of arn:aws:kms:us-east-1:000000000000:key/audit: it was written "
        "or rewritten by someone other than the recorder (and 3 later record(s) as well)"
    ]
    check = checks.audit_log_unaltered(rewritten, [], {}, signer.key)
    assert not check.ok and check.failures[0].startswith("record 3 ")
    # Signed by another key (the rewriter's own): no better.
    other = _Signer()
    assert signature_problems([*records[:5], other.sign(records[5])], signer.key)[0][0].startswith("record 6 ")
    # Stripping the signatures does not help either: from the first signed record on, each must be signed.
    stripped = [*records[:4], replace(records[4], signature=None), records[5]]
    assert signature_problems(stripped, signer.key)[0] == [
        "record 5 is not signed: it was written or rewritten by someone other than the recorder"
    ]
    unsigned = [replace(r, signature=None) for r in records]
    assert signature_problems(unsigned, signer.key)[0] == [
        "none of the 6 records is signed: nothing vouches for the chain"
    ]
    # Records from before the log was signed are vouched for by the first signed record's digest.
    legacy = _chain(3)
    continued = [*legacy, signer.sign(AuditRecord.next_after(legacy[-1], {"kind": "test", "n": 3}))]
    assert signature_problems(continued, signer.key) == (
        [],
        ["records 1–3 predate signing; the signature of record 4 covers them through its digest"],
    )
    # A signature that is no base64 at all is simply invalid.
    assert not signer.key.verifies(replace(records[0], signature="not base64!"))


def test_ciphertext_objects_must_match_their_manifests() -> None:
    good = {"uri": "s3://b/inbox/clinic-a/b-1/shards/00000.fhe", "declared_sha256": "a" * 64, "sha256": "a" * 64}
    assert checks.objects_match_manifests([_bundle(input_objects=[good])]).ok
    swapped = {**good, "sha256": "c" * 64}
    [failure] = checks.objects_match_manifests([_bundle(input_objects=[swapped])]).failures
    assert "00000.fhe" in failure and "c" * 64 in failure


def test_an_erased_owners_bundles_are_noted_not_failed_for_their_missing_objects() -> None:
    missing = {"uri": "s3://b/outbox/clinic-a/b-1/shards/00000.out", "declared_sha256": "a" * 64, "sha256": None}
    erasure = {"time": (T0 + timedelta(hours=1)).isoformat(), "seq": 9}
    check = checks.objects_match_manifests([_bundle(output_objects=[missing], erased=erasure)])
    assert check.ok and "erased" in check.notes[0] and "record 9" in check.notes[0]
    assert not checks.objects_match_manifests([_bundle(output_objects=[missing])]).ok


# ---- the recorder ----------------------------------------------------------------------------------------------

GROUP = "fhe-models"
FAMILY = "fhe-inference"  # the deployment's endpoint name: version v is served by fhe-inference-v<v>
OWNER, BUNDLE = "clinic-a", "b-1"


@dataclass
class Recorded:
    """The recorder under moto, with what a deployment would have: the bundle bucket, the workflow's state machine
    and one execution of bundle clinic-a/b-1, the model package group with one package, the signing key."""

    module: ModuleType
    table: Any
    s3: Any
    sfn: Any
    sagemaker: Any
    kms: Any
    state_machine: str
    execution: str
    package: str
    key: str

    @property
    def layout(self) -> BundleLayout:
        return BundleLayout(UNIT_BUCKET, OWNER)

    def record(self, event: dict[str, Any]) -> dict[str, Any]:
        """Verify and append ``event`` as the handler does; the body chained."""
        from aws_lambda_powertools.utilities.data_classes import EventBridgeEvent

        body: dict[str, Any] = self.module.record_body(EventBridgeEvent(event))
        self.module.append(entry={"event_id": event["id"], "body": body})
        return body

    def chain(self) -> list[AuditRecord]:
        return list(read_chain(self.table))


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Iterator[Recorded]:
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    for key, value in {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "WORKFLOW_TABLE": "workflow",
        "AUDIT_TABLE": "audit",
        "BUNDLE_BUCKET": UNIT_BUCKET,
        "MODEL_PACKAGE_GROUP": GROUP,
        "ENDPOINT_NAME": FAMILY,
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
        s3, sfn, sagemaker, kms = (aws.client(name) for name in ("s3", "stepfunctions", "sagemaker", "kms"))
        s3.create_bucket(Bucket=UNIT_BUCKET)
        key = kms.create_key(KeySpec=SIGNING_KEY_SPEC, KeyUsage="SIGN_VERIFY")["KeyMetadata"]["Arn"]
        role = "arn:aws:iam::123456789012:role/states"
        machine = sfn.create_state_machine(name="fhe-batch-inference", definition="{}", roleArn=role)
        bundle = {
            "bucket": UNIT_BUCKET,
            "bundle_id": BUNDLE,
            "manifest_key": f"inbox/{OWNER}/{BUNDLE}/manifest.json",
            "etag": "e1",
        }
        execution = sfn.start_execution(
            stateMachineArn=machine["stateMachineArn"], name="b-1-000000000000", input=json.dumps({"bundle": bundle})
        )["executionArn"]
        sagemaker.create_model_package_group(ModelPackageGroupName=GROUP)
        package = sagemaker.create_model_package(
            ModelPackageGroupName=GROUP, ModelApprovalStatus="PendingManualApproval"
        )
        monkeypatch.setenv("STATE_MACHINE_ARN", machine["stateMachineArn"])
        monkeypatch.setenv("AUDIT_SIGNING_KEY", key)
        module = importlib.import_module("lambdas.record")
        module.audit_table.cache_clear()
        module.client.cache_clear()
        yield Recorded(
            module,
            table,
            s3,
            sfn,
            sagemaker,
            kms,
            machine["stateMachineArn"],
            execution,
            package["ModelPackageArn"],
            key,
        )
        module.audit_table.cache_clear()
        module.client.cache_clear()


def _event(
    detail_type: str, detail: dict[str, Any], source: str = "fhe.batch-inference", *, event_id: str | None = None
) -> dict[str, Any]:
    return {
        "version": "0",
        "id": event_id or f"event-{detail_type}-{json.dumps(detail, sort_keys=True)}"[:60],
        "detail-type": detail_type,
        "source": source,
        "account": "000000000000",
        "time": "2026-11-22T10:00:00Z",
        "region": "us-east-1",
        "resources": [],
        "detail": detail,
    }


def _result_manifest(package: str, bundle_id: str = BUNDLE) -> bytes:
    shards = tuple(ShardEntry(i, shard_key(i, "results"), 2, "c" * 64, min_shard_bytes(2)) for i in range(2))
    versions = {"python": "3.11.7", "concrete_python": "2.10.0", "concrete_ml": "1.9.0"}
    key = KeyRef("a" * 64, f"s3://{UNIT_BUCKET}/inbox/{OWNER}/keys/{'a' * 64}.ekey", 4)
    manifest = Manifest(
        "result", bundle_id, "2026-11-22T10:00:00Z", package_ref(package), versions, key, shards, "d" * 64
    )
    return manifest.to_json()


def _delivered(recorded: Recorded) -> dict[str, Any]:
    """The result manifest of clinic-a/b-1 written, and the detail Assemble would announce it with."""
    uri = recorded.layout.result_manifest(BUNDLE)
    data = _result_manifest(recorded.package)
    recorded.s3.put_object(Bucket=uri.bucket, Key=uri.key, Body=data)
    return {
        "owner": OWNER,
        "bundle_id": BUNDLE,
        "execution": recorded.execution,
        "model_package_arn": recorded.package,
        "samples": 999,  # the event's word; the record keeps the manifest's (4)
        "shards": 2,
        "result_manifest": str(uri),
        "result_manifest_sha256": hashlib.sha256(data).hexdigest(),
    }


def _quarantined(recorded: Recorded) -> dict[str, Any]:
    uri = recorded.layout.quarantine_reason(BUNDLE)
    reason = {"owner": OWNER, "bundle_id": BUNDLE, "stage": "validate", "code": "missing_object", "shard": None}
    data = json.dumps(reason).encode()
    recorded.s3.put_object(Bucket=uri.bucket, Key=uri.key, Body=data)
    return {
        "owner": OWNER,
        "bundle_id": BUNDLE,
        "execution": recorded.execution,
        "reason_uri": str(uri),
        "reason_sha256": hashlib.sha256(data).hexdigest(),
        "stage": "validate",
        "code": "missing_object",
    }


def _approved(recorded: Recorded, status: str = "Approved") -> dict[str, Any]:
    recorded.sagemaker.update_model_package(
        ModelPackageArn=recorded.package, ModelApprovalStatus=status, ApprovalDescription="metrics reviewed"
    )
    return {"ModelPackageArn": recorded.package, "ModelApprovalStatus": status}


def test_the_recorder_chains_what_the_services_confirm_signed_and_survives_a_lost_race(
    recorder: Recorded, monkeypatch: pytest.MonkeyPatch
) -> None:
    completed = recorder.record(_event("Bundle Completed", _delivered(recorder)))
    assert completed["kind"] == "bundle_completed" and completed["subject"] == f"{OWNER}/{BUNDLE}"
    assert (completed["detail"]["samples"], completed["detail"]["shards"]) == (4, 2), "read from the manifest"
    quarantined = recorder.record(_event("Bundle Quarantined", _quarantined(recorder)))
    assert quarantined["kind"] == "bundle_quarantined" and quarantined["detail"]["code"] == "missing_object"
    approval = recorder.record(_event("Model Package Approval", _approved(recorder), source="fhe.model-registry"))
    registry = recorder.sagemaker.describe_model_package(ModelPackageName=recorder.package)
    assert approval["kind"] == "approval" and approval["subject"] == recorder.package
    assert approval["detail"]["ModelApprovalStatus"] == "Approved"
    assert approval["detail"]["decided_by"] == user_identity(registry["LastModifiedBy"]) != "unknown"
    assert "InferenceSpecification" not in approval["detail"], "only the decision is kept"
    # Another writer appends between this writer's read and its write: the conditional put refuses, it re-reads.
    stale = last_record(recorder.table)
    reads = iter([stale])
    monkeypatch.setattr(recorder.module, "last_record", lambda t: next(reads, None) or last_record(t))
    recorder.table.put_item(Item=AuditRecord.next_after(stale, {"kind": "other writer", "subject": "x"}).to_item())
    native = _event(
        "SageMaker Model Package State Change",
        {"ModelPackageArn": recorder.package, "ModelApprovalStatus": "Approved"},
        source="aws.sagemaker",
    )
    recorder.record(native)

    chained = recorder.chain()
    assert [r.seq for r in chained] == [1, 2, 3, 4, 5] and chain_problems(chained) == []
    assert [r.body["kind"] for r in chained] == [
        "bundle_completed",
        "bundle_quarantined",
        "approval",
        "other writer",
        "approval",
    ]
    # Every record the recorder wrote carries the signing key's signature; the other writer's does not.
    key = SigningKey.from_kms(recorder.kms, recorder.key)
    assert [key.verifies(r) for r in chained] == [True, True, True, False, True]
    assert {r.signing_key for r in chained if r.signature} == {recorder.key}
    failures, _ = signature_problems(chained, key)
    assert failures == ["record 4 is not signed: it was written or rewritten by someone other than the recorder"]


def _forgeries(recorder: Recorded) -> list[tuple[dict[str, Any], str]]:
    """(event, what its refusal says): one for each check the recorder makes."""
    delivered, quarantined = _delivered(recorder), _quarantined(recorder)
    registry = "fhe.model-registry"
    other_machine = recorder.sfn.create_state_machine(
        name="someone-elses", definition="{}", roleArn="arn:aws:iam::123456789012:role/states"
    )["stateMachineArn"]
    elsewhere = recorder.sfn.start_execution(
        stateMachineArn=other_machine, name="b-1-x", input=json.dumps({"bundle": {}})
    )["executionArn"]
    other_bundle = {
        "bucket": UNIT_BUCKET,
        "bundle_id": "b-2",
        "manifest_key": f"inbox/{OWNER}/b-2/manifest.json",
        "etag": "e",
    }
    other_run = recorder.sfn.start_execution(
        stateMachineArn=recorder.state_machine, name="b-2-x", input=json.dumps({"bundle": other_bundle})
    )["executionArn"]
    _approved(recorder)
    other_group = recorder.package.replace(f"/{GROUP}/", "/other-models/")
    return [
        (_event("Bundle Completed", delivered, source=registry), "does not send events of its detail type"),
        (_event("Bundle Started", {"owner": OWNER, "bundle_id": BUNDLE}), "does not send events of its detail type"),
        (_event("Model Version Served", {"endpoint": "x"}, source="aws.sagemaker"), "does not send"),
        (_event("Bundle Completed", {**delivered, "result_manifest_sha256": "0" * 64}), "sha256 is not the one"),
        (_event("Bundle Completed", {**delivered, "bundle_id": "b-9"}), "execution it names ran another bundle"),
        (_event("Bundle Completed", {**delivered, "execution": elsewhere}), "not one of this deployment's workflow"),
        (_event("Bundle Completed", {**delivered, "execution": other_run}), "ran another bundle"),
        (_event("Bundle Completed", {**delivered, "execution": ""}), "not one of this deployment's workflow"),
        (_event("Bundle Completed", {**delivered, "owner": "../x"}), "no valid owner and bundle id"),
        (
            _event("Bundle Completed", {**delivered, "result_manifest": f"s3://{UNIT_BUCKET}/outbox/clinic-b/b-1/m"}),
            "is not the bundle's own",
        ),
        (_event("Bundle Quarantined", {**quarantined, "reason_sha256": "f" * 64}), "sha256 is not the one"),
        (_event("Bundle Quarantined", {**quarantined, "execution": elsewhere}), "not one of this deployment's"),
        (
            _event(
                "Model Package Approval",
                {"ModelPackageArn": recorder.package, "ModelApprovalStatus": "Rejected"},
                registry,
            ),
            "registry's approval status of the package (Approved) is not the one it claims",
        ),
        (
            _event(
                "Model Package Approval",
                {
                    "ModelPackageArn": recorder.package,
                    "ModelApprovalStatus": "Approved",
                    "decided_by": "arn:aws:iam::123456789012:user/chief-medical-officer",
                },
                registry,
            ),
            "names its own decider",
        ),
        (
            _event(
                "Model Package Approval", {"ModelPackageArn": other_group, "ModelApprovalStatus": "Approved"}, registry
            ),
            "not of this deployment's model package group",
        ),
        (
            _event(
                "Model Package Approval",
                {"ModelPackageArn": recorder.package.rsplit("/", 1)[0] + "/77", "ModelApprovalStatus": "Approved"},
                registry,
            ),
            "registry has no model package of that name",
        ),
        (_event("Model Package Approval", {"ModelPackageArn": "fhe-models/1"}, registry), "no versioned model package"),
        (
            _event(
                "Model Version Served",
                {"endpoint": "other-v1", "version": 1, "model_package_arn": recorder.package},
                registry,
            ),
            "not this deployment's endpoint of that version",
        ),
        (
            _event(
                "Model Version Served",
                {"endpoint": f"{FAMILY}-v1", "version": 1, "model_package_arn": recorder.package},
                registry,
            ),
            "endpoint it names does not exist",
        ),
    ]


def test_the_recorder_refuses_what_the_services_do_not_confirm_and_says_so_on_record(recorder: Recorded) -> None:
    forgeries = _forgeries(recorder)
    for number, (event, reason) in enumerate(forgeries):
        event["id"] = f"forged-{number}"
        body = recorder.record(event)
        assert body["kind"] == REFUSED_EVENT, (number, body)
        assert reason in body["detail"]["reason"], (number, body["detail"]["reason"])
    chained = recorder.chain()
    assert [r.body["event_id"] for r in chained] == [f"forged-{n}" for n in range(len(forgeries))]
    for record, (event, _) in zip(chained, forgeries, strict=True):
        assert record.body["source"] == event["source"] and record.body["subject"] == event["detail-type"]
        # Nothing the sender chose beyond what it claimed to be: no field of its detail is on record.
        assert set(record.body["detail"]) == {"reason"}
        for value in event["detail"].values():
            if isinstance(value, str) and len(value) > 6:
                assert value not in record.body_json, (record.seq, value)
    key = SigningKey.from_kms(recorder.kms, recorder.key)
    assert all(key.verifies(r) for r in chained) and chain_problems(chained) == []


def test_a_version_served_or_retired_is_recorded_as_sagemaker_has_it(recorder: Recorded) -> None:
    sagemaker, endpoint, registry = recorder.sagemaker, f"{FAMILY}-v1", "fhe.model-registry"
    sagemaker.create_model(
        ModelName=f"{FAMILY}-v1-model",
        ExecutionRoleArn="arn:aws:iam::123456789012:role/endpoint",
        PrimaryContainer={"ModelPackageName": recorder.package},
    )
    variant = {"VariantName": "AllTraffic", "ModelName": f"{FAMILY}-v1-model", "InstanceType": "ml.m5.xlarge"}
    sagemaker.create_endpoint_config(EndpointConfigName=f"{FAMILY}-v1-config", ProductionVariants=[variant])
    sagemaker.create_endpoint(EndpointName=endpoint, EndpointConfigName=f"{FAMILY}-v1-config")
    served = {"endpoint": endpoint, "version": 1, "model_package_arn": recorder.package, "by": "arn:aws:sts::1:x"}
    body = recorder.record(_event("Model Version Served", served, registry))
    assert body["kind"] == "version_served" and body["detail"]["model_package_arn"] == recorder.package
    other = recorder.package.rsplit("/", 1)[0] + "/2"
    refused = recorder.record(_event("Model Version Served", {**served, "model_package_arn": other}, registry))
    assert "does not serve the model package it names" in refused["detail"]["reason"]
    retired = {"endpoint": endpoint, "version": 1, "by": "arn:aws:sts::1:x"}
    assert "is still there" in recorder.record(_event("Model Version Retired", retired, registry))["detail"]["reason"]
    sagemaker.delete_endpoint(EndpointName=endpoint)
    body = recorder.record(_event("Model Version Retired", retired, registry, event_id="retired-after-delete"))
    assert body["kind"] == "version_retired" and body["subject"] == endpoint


def test_a_deliverys_serving_time_is_recorded_from_its_usage_record(recorder: Recorded) -> None:
    detail = _delivered(recorder)
    written = write_usage_record(recorder.s3, recorder.layout, BUNDLE, ServedUsage(2, 7.5, 6.0))
    named = {**detail, "usage_record": str(written.uri), "usage_sha256": written.sha256}
    body = recorder.record(_event("Bundle Completed", named, event_id="with-usage"))
    assert body["detail"]["usage"] == {"shards": 2, "serving_seconds": 7.5, "fhe_seconds": 6.0}
    forged = {**named, "usage_sha256": "0" * 64}
    refused = recorder.record(_event("Bundle Completed", forged, event_id="forged-usage"))
    assert refused["kind"] == REFUSED_EVENT and "usage record's sha256" in refused["detail"]["reason"]
    elsewhere = {**named, "usage_record": str(written.uri).replace(OWNER, "clinic-b")}
    refused = recorder.record(_event("Bundle Completed", elsewhere, event_id="moved-usage"))
    assert refused["kind"] == REFUSED_EVENT and "not the bundle's own" in refused["detail"]["reason"]


def test_an_owners_erasure_is_recorded_only_once_its_folders_hold_no_version(recorder: Recorded) -> None:
    s3, owners = recorder.s3, "fhe.owners"
    s3.put_bucket_versioning(Bucket=UNIT_BUCKET, VersioningConfiguration={"Status": "Enabled"})
    key = f"requests/{OWNER}/{BUNDLE}/plan.json"
    s3.put_object(Bucket=UNIT_BUCKET, Key=key, Body=b"{}")
    erased = {"owner": OWNER, "object_versions": 12}
    refused = recorder.record(_event("Owner Data Erased", erased, owners, event_id="erase-1"))
    assert refused["kind"] == REFUSED_EVENT and "requests folder" in refused["detail"]["reason"]
    s3.delete_object(Bucket=UNIT_BUCKET, Key=key)  # a delete marker is a version still
    refused = recorder.record(_event("Owner Data Erased", erased, owners, event_id="erase-2"))
    assert refused["kind"] == REFUSED_EVENT
    listed = s3.list_object_versions(Bucket=UNIT_BUCKET)
    for version in listed.get("Versions", []) + listed.get("DeleteMarkers", []):
        s3.delete_object(Bucket=UNIT_BUCKET, Key=version["Key"], VersionId=version["VersionId"])
    body = recorder.record(_event("Owner Data Erased", {**erased, "responses": 2}, owners, event_id="erase-3"))
    assert body["kind"] == "owner_erased" and body["subject"] == OWNER and body["detail"]["object_versions"] == 12
    assert body["detail"]["confirmed_at"] and body["detail"]["responses"] == 2
    # An export: the counts it claims must be what the owner's outbox and quarantine folders hold.
    s3.put_object(Bucket=UNIT_BUCKET, Key=f"outbox/{OWNER}/{BUNDLE}/manifest.json", Body=b"x" * 30)
    s3.put_object(Bucket=UNIT_BUCKET, Key=f"quarantine/{OWNER}/b-2/reason.json", Body=b"y" * 10)
    exported = {"owner": OWNER, "objects": 2, "bytes": 40, "index_sha256": "e" * 64}
    assert recorder.record(_event("Owner Data Exported", exported, owners))["kind"] == "owner_exported"
    short = {**exported, "objects": 1, "bytes": 30}
    refused = recorder.record(_event("Owner Data Exported", short, owners, event_id="short"))
    assert refused["kind"] == REFUSED_EVENT and "not what the owner's folders hold" in refused["detail"]["reason"]
    forged = {**exported, "index_sha256": "not a digest"}
    assert recorder.record(_event("Owner Data Exported", forged, owners, event_id="x"))["kind"] == REFUSED_EVENT
    stranger = recorder.record(_event("Owner Data Erased", erased, "fhe.batch-inference", event_id="y"))
    assert stranger["kind"] == REFUSED_EVENT, "only the owners' source sends an erasure"


def test_the_handler_records_a_queued_event_and_keeps_the_owner_out_of_its_logs(
    recorder: Recorded, caplog: pytest.LogCaptureFixture
) -> None:
    from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

    caplog.set_level(logging.INFO, logger="fhe-batch-workflow")  # whatever level an earlier test left it at
    message = SQSRecord({"messageId": "m-1", "body": json.dumps(_event("Bundle Completed", _delivered(recorder)))})
    assert recorder.module.record_handler(message)["seq"] == 1
    forged = _event("Bundle Completed", {**_delivered(recorder), "result_manifest_sha256": "0" * 64}, event_id="f-1")
    assert recorder.module.record_handler(SQSRecord({"messageId": "m-2", "body": json.dumps(forged)}))["seq"] == 2
    logged = [(r.getMessage(), str(vars(r))) for r in caplog.records if r.name == "fhe-batch-workflow"]
    assert [message for message, _ in logged] == ["recorded", "event refused", "recorded"]
    assert not [line for _, line in logged if OWNER in line], "a batch owner's name in a log line"
    assert [r.body["kind"] for r in recorder.chain()] == ["bundle_completed", REFUSED_EVENT]


def test_an_owners_estimate_is_shown_as_written_or_said_to_be_unusable(s3: Any) -> None:
    """The owner writes estimate.json: the audit reads it with a limit and shows only its known fields."""
    from audit.collect import MAX_ESTIMATE_BYTES, estimate_shown
    from common.bundle.store import BundleLayout
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
