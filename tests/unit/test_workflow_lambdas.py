"""The workflow handlers' logic on their own: event parsing, failure classification, quarantine reasons."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from common.workflow import BundleRef, EventError, bundle_id_of, bundle_of_execution
from lambdas.events import Failure, ShardTask
from lambdas.notify import InferenceResult, failure_of
from lambdas.quarantine import reason_of
from lambdas.runtime import BundleRejected

BUNDLE = {"bucket": "fhe-batches", "bundle_id": "b-001", "manifest_key": "inbox/b-001/manifest.json", "etag": "abc"}


def test_only_inbox_manifests_name_a_bundle() -> None:
    assert bundle_id_of("inbox/b-001/manifest.json") == "b-001"
    for key in (
        "inbox/b-001/shards/00000.fhe",
        "outbox/b-001/manifest.json",
        "inbox/../manifest.json",
        "inbox/a/b/manifest.json",
        "inbox/b-001/manifest.json.bak",
    ):
        assert bundle_id_of(key) is None, key


def test_bundle_ref_checks_its_fields_and_names_its_execution() -> None:
    ref = BundleRef.from_dict(BUNDLE)
    assert ref.execution_name == BundleRef.from_dict(BUNDLE).execution_name
    assert ref.execution_name != BundleRef.from_dict({**BUNDLE, "etag": "abd"}).execution_name
    long = BundleRef.from_dict({**BUNDLE, "bundle_id": "x" * 64, "manifest_key": f"inbox/{'x' * 64}/manifest.json"})
    assert len(long.execution_name) <= 80  # the Step Functions limit
    assert bundle_of_execution(long.execution_name) == "x" * 64
    with pytest.raises(EventError, match="not the manifest of bundle"):
        BundleRef.from_dict({**BUNDLE, "manifest_key": "inbox/other/manifest.json"})
    with pytest.raises(EventError, match="etag"):
        BundleRef.from_dict({**BUNDLE, "etag": ""})
    with pytest.raises(EventError, match="shard_index"):
        ShardTask.from_dict({"bundle": BUNDLE, "endpoint": "e", "shard_index": True, "task_token": "t"})


def _notification(status: str, reason: str = "") -> str:
    message = {
        "eventName": "InferenceResult",
        "invocationStatus": status,
        "inferenceId": "b-001-00002-abc",
        "responseParameters": {"outputLocation": "s3://a/b.out"},
        "failureReason": reason,
    }
    return json.dumps({"Type": "Notification", "Message": json.dumps(message)})


def test_a_shard_the_container_refused_is_not_retried_and_names_its_field() -> None:
    container = json.dumps({"error": {"field": "shards[2]", "code": "checksum", "message": "sha256 differs"}})
    reason = f'ClientError: Received server error (400) from primary with message "{container}".'
    result = InferenceResult.from_sns_envelope(_notification("Failed", reason))
    error, cause = failure_of(result, 2)
    assert error == "ShardRejected" and cause.code == "checksum" and cause.field == "shards[2]"
    assert cause.shard == 2 and cause.stage == "infer"
    escaped = reason.replace('"', '\\"')  # as some SageMaker texts quote the container's answer
    quoted = failure_of(InferenceResult.from_sns_envelope(_notification("Failed", escaped)), 2)[1]
    assert (quoted.code, quoted.field) == ("checksum", "shards[2]")


def test_an_instance_fault_is_a_retryable_shard_failure() -> None:
    result = InferenceResult.from_sns_envelope(_notification("Failed", "ServerError: the instance failed"))
    error, cause = failure_of(result, 0)
    assert error == "ShardFailed" and cause.code == "endpoint_failed"
    completed = InferenceResult.from_sns_envelope(_notification("Completed"))
    assert completed.completed and completed.output_location == "s3://a/b.out"
    with pytest.raises(EventError):
        InferenceResult.from_sns_envelope(json.dumps({"Message": json.dumps({"eventName": "Other"})}))


def _failure(stage: str, error: str, cause: str) -> Failure:
    return Failure.from_dict({"bundle": BUNDLE, "stage": stage, "failure": {"Error": error, "Cause": cause}})


def test_reason_of_a_rejected_bundle_keeps_field_and_code() -> None:
    rejected = BundleRejected("validate", "missing_object", "shards[1]: gone", field="shards[1]", shard=1)
    payload = json.dumps({"errorType": "BundleRejected", "errorMessage": str(rejected)})
    reason = reason_of(_failure("validate", "BundleRejected", payload))
    assert reason == replace(rejected.reason, stage="validate")


def test_reason_of_a_failed_map_iteration_names_the_shard() -> None:
    inner = json.dumps({"stage": "infer", "shard": 3, "code": "endpoint_failed", "field": None, "message": "boom"})
    wrapper = json.dumps({"shard": 3, "error": "ShardFailed", "cause": inner})
    reason = reason_of(_failure("infer", "ShardFailed", wrapper))
    assert (reason.stage, reason.shard, reason.code, reason.error) == (
        "infer",
        3,
        "endpoint_failed",
        "ShardFailed",
    )
    timeout = reason_of(
        _failure("infer", "States.Timeout", json.dumps({"shard": 4, "error": "States.Timeout", "cause": ""}))
    )
    assert (timeout.shard, timeout.code) == (4, "timeout")
    opaque = reason_of(_failure("assemble", "Lambda.Unknown", "not json"))
    assert (opaque.stage, opaque.code, opaque.message) == ("assemble", "lambda.unknown", "not json")


def test_retraining_starts_only_this_deployments_pipeline(monkeypatch: pytest.MonkeyPatch) -> None:
    from lambdas.retrain import RetrainEventError, RetrainRequest, display_name

    monkeypatch.setenv("PIPELINE_NAME", "fhe-training")
    assert RetrainRequest.from_event({}) == RetrainRequest("fhe-training", "schedule")
    request = RetrainRequest.from_event({"pipeline_name": "fhe-training", "reason": "schedule fhe-retraining"})
    assert display_name(request.reason) == "schedule-fhe-retraining"
    assert display_name("!!!") == "schedule" and len(display_name("x" * 200)) == 82
    with pytest.raises(RetrainEventError, match="not this deployment's fhe-training"):
        RetrainRequest.from_event({"pipeline_name": "someone-elses"})
    with pytest.raises(RetrainEventError, match="JSON object"):
        RetrainRequest.from_event(["fhe-training"])
