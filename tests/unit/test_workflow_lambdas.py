"""The workflow handlers' logic on their own: event parsing, failure classification, quarantine reasons."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any, cast

import pytest

from common.workflow import BundleRef, EventError, WaitingShard, bundle_of_execution, bundle_of_key
from lambdas.events import Failure, ShardTask
from lambdas.notify import InferenceResult, failure_of
from lambdas.quarantine import reason_of
from lambdas.runtime import BundleRejected

BUNDLE = {
    "bucket": "fhe-bundles",
    "bundle_id": "b-001",
    "manifest_key": "inbox/clinic-a/b-001/manifest.json",
    "etag": "abc",
}


def test_only_inbox_manifests_under_an_owner_name_a_bundle() -> None:
    assert bundle_of_key("inbox/clinic-a/b-001/manifest.json") == ("clinic-a", "b-001")
    for key in (
        "inbox/b-001/manifest.json",  # no owner
        "inbox/clinic-a/b-001/shards/00000.fhe",
        "outbox/clinic-a/b-001/manifest.json",
        "inbox/clinic-a/../manifest.json",
        "inbox/../b-001/manifest.json",
        "inbox/Clinic/b-001/manifest.json",  # owners are lowercase (they name IAM roles and S3 folders)
        "inbox/clinic-a/keys/manifest.json",  # the owner's evaluation keys, never a bundle
        "inbox/clinic-a/a/b/manifest.json",
        "inbox/clinic-a/b-001/manifest.json.bak",
    ):
        assert bundle_of_key(key) is None, key


def test_bundle_ref_checks_its_fields_and_names_its_execution() -> None:
    ref = BundleRef.from_dict(BUNDLE)
    assert ref.execution_name == BundleRef.from_dict(BUNDLE).execution_name
    assert ref.execution_name != BundleRef.from_dict({**BUNDLE, "etag": "abd"}).execution_name
    long = BundleRef.from_dict(
        {**BUNDLE, "bundle_id": "x" * 64, "manifest_key": f"inbox/{'o' * 32}/{'x' * 64}/manifest.json"}
    )
    assert len(long.execution_name) <= 80  # the Step Functions limit
    assert bundle_of_execution(long.execution_name) == "x" * 64
    assert (ref.owner, ref.path, ref.layout.owner) == ("clinic-a", "clinic-a/b-001", "clinic-a")
    # Two owners may choose the same bundle id: their executions are named apart.
    other = BundleRef.from_dict({**BUNDLE, "manifest_key": "inbox/clinic-b/b-001/manifest.json"})
    assert other.execution_name != ref.execution_name
    with pytest.raises(EventError, match="not the manifest of bundle"):
        BundleRef.from_dict({**BUNDLE, "manifest_key": "inbox/clinic-a/other/manifest.json"})
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


class FakeSageMaker:
    """An asynchronous endpoint scaled to zero instances: in service, as on AWS."""

    PACKAGE = "arn:aws:sagemaker:us-east-1:000000000000:model-package/g/1"

    def describe_endpoint(self, EndpointName: str) -> dict[str, Any]:  # noqa: N803 - boto3's names
        variant = {"VariantName": "AllTraffic", "CurrentInstanceCount": 0, "DesiredInstanceCount": 0}
        return {"EndpointStatus": "InService", "EndpointConfigName": "c", "ProductionVariants": [variant]}

    def describe_endpoint_config(self, EndpointConfigName: str) -> dict[str, Any]:  # noqa: N803
        return {"ProductionVariants": [{"ModelName": "m"}]}

    def describe_model(self, ModelName: str) -> dict[str, Any]:  # noqa: N803
        return {"PrimaryContainer": {"ModelPackageName": self.PACKAGE}}


class FakeStepFunctions:
    class exceptions:  # noqa: N801 - boto3's shape
        TaskTimedOut = TaskDoesNotExist = InvalidToken = type("Gone", (Exception,), {})

    def __init__(self) -> None:
        self.calls: list[str] = []

    def send_task_heartbeat(self, taskToken: str) -> None:  # noqa: N803
        self.calls.append(f"heartbeat {taskToken}")

    def send_task_failure(self, **kwargs: Any) -> None:
        self.calls.append(f"failure {kwargs['taskToken']}")

    def list_map_runs(self, executionArn: str) -> dict[str, Any]:  # noqa: N803
        return {"mapRuns": [{"mapRunArn": "arn:map-run"}]}

    def list_executions(self, **kwargs: Any) -> dict[str, Any]:
        assert kwargs["mapRunArn"] == "arn:map-run" and kwargs["statusFilter"] == "FAILED"
        return {"executions": [{"executionArn": "arn:child"}]}

    def describe_execution(self, executionArn: str) -> dict[str, Any]:  # noqa: N803
        cause = {
            "shard": 7,
            "error": "ShardFailed",
            "cause": json.dumps({"stage": "infer", "code": "endpoint_failed", "message": "the instance failed"}),
        }
        return {"status": "FAILED", "error": "ShardFailed", "cause": json.dumps(cause)}


def test_an_endpoint_at_zero_instances_is_serving_for_validate_and_heartbeat(monkeypatch: pytest.MonkeyPatch) -> None:
    from common.bundle.manifest import Manifest
    from lambdas import heartbeat, validate

    sfn, sagemaker = FakeStepFunctions(), FakeSageMaker()
    waiting = WaitingShard("inf-1", "token-1", "bucket", "clinic-a", "b-001", 0, "scaled", 2**40)

    class FakeDynamoDB:
        def get_paginator(self, name: str) -> Any:
            return type("Pages", (), {"paginate": lambda self, **kw: [{"Items": [waiting.to_item()]}]})()

        def delete_item(self, **kwargs: Any) -> None:
            raise AssertionError("a shard whose endpoint serves stays waiting")

    clients = {"sagemaker": sagemaker, "stepfunctions": sfn, "dynamodb": FakeDynamoDB()}
    monkeypatch.setattr(heartbeat, "client", clients.__getitem__)
    monkeypatch.setattr(validate, "client", clients.__getitem__)
    assert heartbeat.beat("table") == {"heartbeats": 1, "failed": 0, "stale": 0, "unknown": 0}
    assert sfn.calls == ["heartbeat token-1"]
    manifest = type("M", (), {"model": type("R", (), {"package_arn": FakeSageMaker.PACKAGE})()})()
    checked: list[str] = []
    monkeypatch.setattr(validate, "check_model", lambda m, arn: checked.append(arn))
    validate.check_endpoint(cast(Manifest, manifest), "scaled")  # no error: in service at zero instances
    assert checked == [FakeSageMaker.PACKAGE]


def test_a_failed_map_run_is_quarantined_naming_the_shard_its_failed_child_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from lambdas import quarantine

    monkeypatch.setattr(quarantine, "client", {"stepfunctions": FakeStepFunctions()}.__getitem__)
    generic = Failure(
        BundleRef.from_dict(BUNDLE),
        "infer",
        "States.ExceedToleratedFailureThreshold",
        "The specified tolerated failure threshold was exceeded",
        "arn:aws:states:us-east-1:000000000000:execution:fhe-batch-inference:b-001",
    )
    reason = quarantine.reason_of(quarantine.failed_shard(generic))
    assert (reason.stage, reason.shard, reason.code) == ("infer", 7, "endpoint_failed"), reason
    assert "the instance failed" in reason.message


@pytest.mark.parametrize("status", ["Approved", "Rejected"])
def test_a_shard_is_sent_only_if_its_package_is_still_approved_once_parked(
    monkeypatch: pytest.MonkeyPatch, status: str
) -> None:
    """The check follows the parking: a revocation that looked before the shard was parked set the rejection
    before it looked, so the check sees it (``lambdas/invoke.py``)."""
    from lambdas import invoke

    calls: list[str] = []
    failures: list[dict[str, Any]] = []

    class Recorder:
        def __init__(self, name: str) -> None:
            self.name = name

        def __getattr__(self, method: str) -> Any:
            def call(**kwargs: Any) -> dict[str, Any]:
                calls.append(f"{self.name}.{method}")
                if method == "describe_model_package":
                    return {"ModelApprovalStatus": status, "ModelPackageVersion": 1, "ApprovalDescription": "a defect"}
                if method == "send_task_failure":
                    failures.append(kwargs)
                return {}

            return call

    monkeypatch.setattr(invoke, "client", lambda name: Recorder(name))
    monkeypatch.setattr(invoke, "setting", lambda name: "table")
    body = {"bundle": BUNDLE, "endpoint": "e-v1", "model_package_arn": FakeSageMaker.PACKAGE, "shard_index": 3,
            "task_token": "token-3"}  # fmt: skip
    record = cast(Any, type("Record", (), {"body": json.dumps(body)})())
    invoke.record_handler(record)
    parked = ["s3.put_object", "dynamodb.put_item", "sagemaker.describe_model_package"]
    if status == "Approved":
        assert calls == [*parked, "sagemaker-runtime.invoke_endpoint_async"] and not failures
        return
    assert calls == [*parked, "dynamodb.delete_item", "stepfunctions.send_task_failure"], calls
    assert failures[0]["error"] == "ShardRejected"  # not retried: the bundle is quarantined at once
    reason = json.loads(failures[0]["cause"])
    assert (reason["code"], reason["shard"]) == ("model_revoked", 3)
    assert (
        reason["message"]
        == f"model package {FakeSageMaker.PACKAGE} was rejected (a defect): version 1 is no longer served"
    )


def test_validate_refuses_an_evaluation_key_outside_the_owners_own_keys() -> None:
    """The endpoint reads any inbox object, so a manifest naming another owner's key is refused before any read."""
    from common.bundle.manifest import KeyRef, Manifest
    from common.bundle.store import BundleLayout
    from lambdas import validate

    ref = BundleRef.from_dict(BUNDLE)
    for uri in (
        f"s3://{ref.bucket}/inbox/clinic-b/keys/{'a' * 64}.ekey",
        f"s3://{ref.bucket}/inbox/clinic-a/b-001/shards/00000.fhe",
        f"s3://another-bucket/inbox/clinic-a/keys/{'a' * 64}.ekey",
    ):
        manifest = cast(Manifest, type("M", (), {"evaluation_key": KeyRef("a" * 64, uri, 4)})())
        with pytest.raises(BundleRejected) as refused:
            validate.check_evaluation_key(manifest, ref.layout)
        reason = refused.value.reason
        assert (reason.code, reason.field) == ("foreign_evaluation_key", "evaluation_key.uri"), uri
        assert "clinic-a/keys" in reason.message
    assert BundleLayout(ref.bucket, "clinic-a").evaluation_key("a" * 64).key == f"inbox/clinic-a/keys/{'a' * 64}.ekey"
