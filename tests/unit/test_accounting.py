"""Every bundle accounted for: the reconcile function's decisions, a re-dropped bundle id, the heartbeat under a
SageMaker that does not answer, the served package read from SageMaker's record; and what the templates must say
for it (every dead-letter queue watched and drained, every event target with its dead-letter queue, the state
machine's log, no queue throttled into its dead-letter queue)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from types import ModuleType
from typing import Any, cast

import pytest
from botocore.exceptions import ClientError

from common.model_package import ModelPackageError, served_package
from common.workflow import BUNDLE_TIME_LIMIT_SECONDS, BundleRef, FailureReason, WaitingShard
from infrastructure import templates
from tests.unit.conftest import UNIT_BUCKET

BUNDLE = {
    "bucket": UNIT_BUCKET,
    "bundle_id": "b-001",
    "manifest_key": "inbox/clinic-a/b-001/manifest.json",
    "etag": "abc",
}
MACHINE = "arn:aws:states:us-east-1:000000000000:stateMachine:fhe-batch-inference"
EXECUTION = "arn:aws:states:us-east-1:000000000000:execution:fhe-batch-inference:b-001-0123"


class Gone(Exception):
    pass


class FakeStepFunctions:
    """An execution's description and history, and the task calls made."""

    class exceptions:  # noqa: N801 - boto3's shape
        TaskTimedOut = TaskDoesNotExist = InvalidToken = Gone
        ExecutionDoesNotExist = type("ExecutionDoesNotExist", (Exception,), {})

    def __init__(self, history: list[dict[str, Any]] | None = None, executions: set[str] | None = None) -> None:
        self.history = history or []
        self.executions = executions or set()
        self.failures: list[dict[str, Any]] = []

    def get_paginator(self, name: str) -> Any:
        assert name == "get_execution_history"
        history = self.history
        return type("Pages", (), {"paginate": lambda self, **kw: [{"events": list(reversed(history))}]})()

    def describe_execution(self, executionArn: str) -> dict[str, Any]:  # noqa: N803 - boto3's names
        if executionArn not in self.executions:
            raise self.exceptions.ExecutionDoesNotExist(executionArn)
        return {"executionArn": executionArn, "status": "RUNNING"}

    def send_task_failure(self, **kwargs: Any) -> None:
        if kwargs["taskToken"] == "stale":
            raise Gone()
        self.failures.append(kwargs)


@pytest.fixture
def reconcile(monkeypatch: pytest.MonkeyPatch, s3: Any) -> Iterator[tuple[ModuleType, list[dict[str, Any]]]]:
    monkeypatch.setenv("WORKFLOW_TABLE", "workflow")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("STATE_MACHINE_ARN", MACHINE)
    from lambdas import reconcile as module

    recorded: list[dict[str, Any]] = []

    def record(bundle: BundleRef, reason: FailureReason, execution: str | None, **extra: Any) -> dict[str, Any]:
        recorded.append({"bundle": bundle, "reason": reason, "execution": execution, **extra})
        return {}

    monkeypatch.setattr(module, "record_quarantine", record)
    monkeypatch.setattr(module, "dropped_etag", lambda bundle: bundle.etag)  # the drop these executions ran
    yield module, recorded


def _use(monkeypatch: pytest.MonkeyPatch, module: ModuleType, **clients: Any) -> None:
    monkeypatch.setattr(module, "client", clients.__getitem__)


def _status_change(status: str, **detail: Any) -> dict[str, Any]:
    started = {"bundle": BUNDLE, "submitted": {}}
    body = {"executionArn": EXECUTION, "stateMachineArn": MACHINE, "status": status, "input": json.dumps(started)}
    return {"detail-type": "Step Functions Execution Status Change", "source": "aws.states", "detail": body | detail}


def _record(body: dict[str, Any]) -> Any:
    return cast(Any, type("Record", (), {"body": json.dumps(body)})())


@pytest.mark.parametrize(("status", "code"), [("ABORTED", "execution_stopped"), ("TIMED_OUT", "execution_timed_out")])
def test_a_stopped_or_timed_out_execution_gets_a_record_the_owner_can_act_on(
    monkeypatch: pytest.MonkeyPatch, reconcile: tuple[ModuleType, list[dict[str, Any]]], s3: Any, status: str, code: str
) -> None:
    module, recorded = reconcile
    _use(monkeypatch, module, s3=s3, stepfunctions=FakeStepFunctions())
    assert module.record_handler(_record(_status_change(status))) == "quarantined"
    (only,) = recorded
    assert only["execution"] == EXECUTION and only["execution_status"] == status
    assert (only["reason"].stage, only["reason"].code) == ("workflow", code)
    assert "drop" in only["reason"].message  # what the owner can do


def test_a_failed_quarantine_step_records_the_reason_it_was_given(
    monkeypatch: pytest.MonkeyPatch, reconcile: tuple[ModuleType, list[dict[str, Any]]], s3: Any
) -> None:
    module, recorded = reconcile
    given = {
        "bundle": BUNDLE,
        "stage": "validate",
        "failure": {
            "Error": "BundleRejected",
            "Cause": json.dumps(
                {
                    "stage": "validate",
                    "code": "missing_object",
                    "message": "shards[1]: absent",
                    "field": "shards[1]",
                    "shard": 1,
                }
            ),
        },
    }  # as the state was entered: the step's Parameters add the execution only after
    history = [
        {"type": "TaskStateEntered", "stateEnteredEventDetails": {"name": "Validate", "input": "{}"}},
        {"type": "TaskStateEntered", "stateEnteredEventDetails": {"name": "Quarantine", "input": json.dumps(given)}},
        {"type": "FailStateEntered", "stateEnteredEventDetails": {"name": "QuarantineFailed", "input": "{}"}},
    ]
    _use(monkeypatch, module, s3=s3, stepfunctions=FakeStepFunctions(history))
    outcome = module.record_handler(_record(_status_change("FAILED", error="QuarantineFailed")))
    assert outcome == "quarantined"
    reason = recorded[0]["reason"]
    assert (reason.stage, reason.code, reason.field, reason.shard) == ("validate", "missing_object", "shards[1]", 1)


def test_an_execution_the_quarantine_step_recorded_is_left_alone_and_children_are_not_bundles(
    monkeypatch: pytest.MonkeyPatch, reconcile: tuple[ModuleType, list[dict[str, Any]]], s3: Any
) -> None:
    module, recorded = reconcile
    _use(monkeypatch, module, s3=s3, stepfunctions=FakeStepFunctions())
    reason_key = "quarantine/clinic-a/b-001/reason.json"
    s3.put_object(Bucket=UNIT_BUCKET, Key=reason_key, Body=json.dumps({"execution": "an older drop"}).encode())
    assert module.record_handler(_record(_status_change("FAILED"))) == "quarantined"  # an older drop's record
    s3.put_object(Bucket=UNIT_BUCKET, Key=reason_key, Body=json.dumps({"execution": EXECUTION}).encode())
    assert module.record_handler(_record(_status_change("FAILED"))) == "recorded"
    child = _status_change("FAILED", input=json.dumps({"bundle": BUNDLE, "shard_index": 3}))
    assert module.record_handler(_record(child)) == "not_a_bundle"
    assert module.record_handler(_record(_status_change("SUCCEEDED"))) == "ignored"
    assert len(recorded) == 1
    announced: list[dict[str, Any]] = []
    monkeypatch.setattr(module, "announce_quarantine", lambda bundle, record, body: announced.append(record))
    # The Quarantine step wrote the record and failed after it: its announcement is made again.
    assert module.record_handler(_record(_status_change("FAILED", error="QuarantineFailed"))) == "announced"
    assert announced == [{"execution": EXECUTION}]
    # The bundle dropped again since: an older execution's end never overwrites the newer drop's record.
    s3.delete_object(Bucket=UNIT_BUCKET, Key=reason_key)
    monkeypatch.setattr(module, "dropped_etag", lambda bundle: "a-newer-drop")
    assert module.record_handler(_record(_status_change("ABORTED"))) == "superseded"
    assert len(recorded) == 1


def test_a_dead_lettered_start_is_quarantined_unless_its_execution_ran(
    monkeypatch: pytest.MonkeyPatch, reconcile: tuple[ModuleType, list[dict[str, Any]]], s3: Any
) -> None:
    module, recorded = reconcile
    event = {
        "version": "0",
        "id": "e-1",
        "detail-type": "Object Created",
        "source": "aws.s3",
        "account": "000000000000",
        "time": "2026-12-04T00:00:00Z",
        "region": "us-east-1",
        "resources": [],
        "detail": {
            "bucket": {"name": UNIT_BUCKET},
            "object": {"key": BUNDLE["manifest_key"], "etag": "abc", "size": 10},
            "requester": "000000000000",
            "source-ip-address": "127.0.0.1",
        },
    }
    ref = BundleRef.from_dict(BUNDLE)
    execution = MACHINE.replace(":stateMachine:", ":execution:") + ":" + ref.execution_name
    _use(monkeypatch, module, s3=s3, stepfunctions=FakeStepFunctions(executions={execution}))
    assert module.record_handler(_record(event)) == "started" and not recorded
    _use(monkeypatch, module, s3=s3, stepfunctions=FakeStepFunctions())
    assert module.record_handler(_record(event)) == "quarantined"
    (only,) = recorded
    assert (only["reason"].stage, only["reason"].code, only["execution"]) == ("start", "start_failed", None)
    assert only["manifest_etag"] == "abc"


def test_a_dead_lettered_shard_or_notification_fails_its_wait_without_retry(
    monkeypatch: pytest.MonkeyPatch, reconcile: tuple[ModuleType, list[dict[str, Any]]], s3: Any
) -> None:
    module, _ = reconcile
    sfn = FakeStepFunctions()
    waiting = WaitingShard("inf-1", "token-2", UNIT_BUCKET, "clinic-a", "b-001", 2, "e-v1", 2**40)
    deleted: list[Any] = []

    class FakeDynamoDB:
        def get_item(self, **kwargs: Any) -> dict[str, Any]:
            return {"Item": waiting.to_item()} if kwargs["Key"] == WaitingShard.key_of("inf-1") else {}

        def delete_item(self, **kwargs: Any) -> None:
            deleted.append(kwargs["Key"])

    _use(monkeypatch, module, s3=s3, stepfunctions=sfn, dynamodb=FakeDynamoDB())
    task = {"bundle": BUNDLE, "endpoint": "e-v1", "model_package_arn": "arn:p", "shard_index": 4, "task_token": "t-4"}
    assert module.record_handler(_record(task)) == "ShardNotSent"
    assert module.record_handler(_record({**task, "task_token": "stale"})) == "stale"
    message = {"eventName": "InferenceResult", "invocationStatus": "Completed", "inferenceId": "inf-1"}
    assert (
        module.record_handler(_record({"Type": "Notification", "Message": json.dumps(message)})) == "NotificationLost"
    )
    errors = [(f["taskToken"], f["error"], json.loads(f["cause"])["shard"]) for f in sfn.failures]
    # Neither is among the errors the state machine retries: the bundle is quarantined naming the shard.
    assert errors == [("t-4", "ShardNotSent", 4), ("token-2", "NotificationLost", 2)]
    assert deleted == [WaitingShard.key_of("inf-1")]
    definition = json.loads(templates.STATE_MACHINE.read_text())
    wait = definition["States"]["InferShards"]["ItemProcessor"]["States"]["InvokeEndpoint"]
    retried = {error for rule in wait["Retry"] for error in rule["ErrorEquals"]}
    assert not retried & {"ShardNotSent", "NotificationLost", "States.ALL"}


def test_the_sweep_accounts_for_recent_ends_only(
    monkeypatch: pytest.MonkeyPatch, reconcile: tuple[ModuleType, list[dict[str, Any]]], s3: Any
) -> None:
    module, recorded = reconcile
    now = datetime(2026, 12, 4, 12, tzinfo=UTC)
    listed = {  # newest start first, as Step Functions lists them
        "ABORTED": [
            {"executionArn": EXECUTION, "startDate": datetime(2026, 12, 4, 10, tzinfo=UTC),
             "stopDate": datetime(2026, 12, 4, 11, tzinfo=UTC)},
            {"executionArn": EXECUTION + "-old", "startDate": datetime(2026, 12, 1, tzinfo=UTC),
             "stopDate": datetime(2026, 12, 1, 1, tzinfo=UTC)},
            # Started days ago, within the time limit, ended within the day: swept.
            {"executionArn": EXECUTION + "-long", "startDate": datetime(2026, 11, 30, tzinfo=UTC),
             "stopDate": datetime(2026, 12, 4, 9, tzinfo=UTC)},
            # Started before any execution can still have been running a day ago: the listing stops here.
            {"executionArn": EXECUTION + "-ancient", "startDate": datetime(2026, 11, 1, tzinfo=UTC),
             "stopDate": datetime(2026, 12, 4, 9, tzinfo=UTC)},
        ]
    }  # fmt: skip
    described: list[str] = []

    class Listing(FakeStepFunctions):
        def get_paginator(self, name: str) -> Any:
            assert name == "list_executions"

            def paginate(self: Any, **kwargs: Any) -> list[dict[str, Any]]:
                assert kwargs["stateMachineArn"] == MACHINE
                return [{"executions": listed.get(kwargs["statusFilter"], [])}]

            return type("Pages", (), {"paginate": paginate})()

        def describe_execution(self, executionArn: str) -> dict[str, Any]:  # noqa: N803
            described.append(executionArn)
            detail: dict[str, Any] = _status_change("ABORTED")["detail"]
            return {**detail, "executionArn": executionArn}

    _use(monkeypatch, module, s3=s3, stepfunctions=Listing())
    assert module.sweep(now) == {"quarantined": 2}
    assert described == [EXECUTION, EXECUTION + "-long"] and recorded[0]["reason"].code == "execution_stopped"


def test_a_manifest_dropped_again_under_a_delivered_id_is_refused_with_a_record(
    monkeypatch: pytest.MonkeyPatch, s3: Any
) -> None:
    monkeypatch.setenv("WORKFLOW_TABLE", "workflow")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    from common.bundle.schema import sha256_hex
    from lambdas import start

    recorded: list[tuple[str, str | None]] = []
    monkeypatch.setattr(start, "client", {"s3": s3}.__getitem__)
    monkeypatch.setattr(start, "record_quarantine", lambda bundle, reason, execution, **extra: recorded.append(
        (reason.code, execution)))  # fmt: skip
    manifest = b'{"the": "manifest"}'
    s3.put_object(Bucket=UNIT_BUCKET, Key=BUNDLE["manifest_key"], Body=manifest)
    result = {"request": {"bundle_id": "b-001", "manifest_sha256": sha256_hex(manifest)}}
    s3.put_object(Bucket=UNIT_BUCKET, Key="outbox/clinic-a/b-001/manifest.json", Body=json.dumps(result).encode())
    ref = BundleRef.from_dict(BUNDLE)
    assert start.redropped(ref)["started"] is False and not recorded  # the same manifest again: a replay
    s3.put_object(Bucket=UNIT_BUCKET, Key=BUNDLE["manifest_key"], Body=b'{"another": "manifest"}')
    assert start.redropped(ref)["reason"] == "already_delivered"
    assert recorded == [("already_delivered", None)]


def test_the_heartbeat_waits_when_sagemaker_does_not_answer_and_fails_shards_of_a_deleted_endpoint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from lambdas import heartbeat

    answers: dict[str, Exception] = {
        "throttled": ClientError({"Error": {"Code": "ThrottlingException", "Message": "Rate exceeded"}}, "Describe"),
        "gone": ClientError(
            {"Error": {"Code": "ValidationException", "Message": "Could not find endpoint gone."}}, "Describe"
        ),
    }

    class SageMaker:
        def describe_endpoint(self, EndpointName: str) -> dict[str, Any]:  # noqa: N803
            raise answers[EndpointName]

    shards = [WaitingShard(f"inf-{e}", f"token-{e}", "b", "clinic-a", "b-001", 0, e, 2**40) for e in answers]
    deleted: list[Any] = []

    class DynamoDB:
        def get_paginator(self, name: str) -> Any:
            return type("Pages", (), {"paginate": lambda self, **kw: [{"Items": [s.to_item() for s in shards]}]})()

        def delete_item(self, **kwargs: Any) -> None:
            deleted.append(kwargs["Key"])

    sfn = FakeStepFunctions()
    monkeypatch.setattr(
        heartbeat, "client", {"sagemaker": SageMaker(), "stepfunctions": sfn, "dynamodb": DynamoDB()}.__getitem__
    )
    assert heartbeat.beat("table") == {"heartbeats": 0, "failed": 1, "stale": 0, "unknown": 1}
    assert [(f["taskToken"], f["error"]) for f in sfn.failures] == [("token-gone", "EndpointUnavailable")]
    assert deleted == [WaitingShard.key_of("inf-gone")]


def test_the_served_package_is_what_sagemakers_record_says_not_the_label() -> None:
    package = "arn:aws:sagemaker:us-east-1:000000000000:model-package/g/1"
    other = "arn:aws:sagemaker:us-east-1:000000000000:model-package/g/2"
    spec = {"Image": "fhe-inference:1", "ModelDataUrl": "s3://m/1/model.tar.gz"}

    class SageMaker:
        def __init__(self, container: dict[str, Any]) -> None:
            self.container = container

        def describe_endpoint(self, EndpointName: str) -> dict[str, Any]:  # noqa: N803
            return {"EndpointStatus": "InService", "EndpointConfigName": "c"}

        def describe_endpoint_config(self, EndpointConfigName: str) -> dict[str, Any]:  # noqa: N803
            return {"ProductionVariants": [{"ModelName": "m"}]}

        def describe_model(self, ModelName: str) -> dict[str, Any]:  # noqa: N803
            return {"PrimaryContainer": self.container}

        def describe_model_package(self, ModelPackageName: str) -> dict[str, Any]:  # noqa: N803
            return {"InferenceSpecification": {"Containers": [spec]}}

    label = {"Environment": {"FHE_MODEL_PACKAGE_ARN": package}}
    assert served_package(SageMaker({"ModelPackageName": package, **label}), "e") == ("InService", package)
    assert served_package(SageMaker({**spec, **label}), "e") == ("InService", package)
    with pytest.raises(ModelPackageError, match="labelled"):
        served_package(SageMaker({"ModelPackageName": other, **label}), "e")
    with pytest.raises(ModelPackageError, match="image and model data"):
        served_package(SageMaker({**spec, "ModelDataUrl": "s3://m/2/model.tar.gz", **label}), "e")


# ---------------------------------------------------------------- the templates


def _resources() -> dict[str, Any]:
    resources: dict[str, Any] = templates.load(templates.PRODUCT)["Resources"]
    return resources


def _of_type(kind: str) -> dict[str, dict[str, Any]]:
    return {name: r.get("Properties", {}) for name, r in _resources().items() if r["Type"] == kind}


def _referenced(value: Any) -> str | None:
    """The logical id an ``!GetAtt X.Arn`` / ``!Ref X`` names."""
    if isinstance(value, dict):
        if "Fn::GetAtt" in value:
            return str(value["Fn::GetAtt"][0])
        if "Ref" in value:
            return str(value["Ref"])
    return None


def _dead_letter_queues() -> set[str]:
    queues = _of_type("AWS::SQS::Queue")
    return {
        str(_referenced(p["RedrivePolicy"]["deadLetterTargetArn"])) for p in queues.values() if "RedrivePolicy" in p
    }


def test_every_dead_letter_queue_has_an_alarm_that_notifies_the_operators() -> None:
    dead_letters = _dead_letter_queues()
    assert dead_letters == {
        "AuditDeadLetterQueue",
        "ManifestDeadLetterQueue",
        "NotificationDeadLetterQueue",
        "ShardDeadLetterQueue",
        "OutcomeDeadLetterQueue",
    }
    watched = {}
    for name, alarm in _of_type("AWS::CloudWatch::Alarm").items():
        assert alarm["AlarmActions"] == [{"Ref": "AlarmTopic"}], name  # every alarm of the stack notifies ML ops
        (dimension,) = alarm["Dimensions"]
        if isinstance(dimension["Value"], dict) and "Fn::GetAtt" in dimension["Value"]:
            queue = dimension["Value"]["Fn::GetAtt"][0]
            watched[queue] = (alarm["MetricName"], alarm["ComparisonOperator"], alarm["Threshold"])
    for queue in dead_letters:
        assert watched.get(queue) == ("NumberOfMessagesReceived", "GreaterThanOrEqualToThreshold", 1), queue


def test_dead_letters_of_the_workflow_are_drained_by_the_reconcile_function() -> None:
    consumed = {
        str(_referenced(m["EventSourceArn"])): str(_referenced(m["FunctionName"]))
        for m in _of_type("AWS::Lambda::EventSourceMapping").values()
    }
    drained = (
        "ManifestDeadLetterQueue",
        "NotificationDeadLetterQueue",
        "ShardDeadLetterQueue",
        "OutcomeDeadLetterQueue",
    )
    for queue in (*drained, "OutcomeQueue"):
        assert consumed.get(queue) == "ReconcileFunction", queue
    assert consumed.get("AuditDeadLetterQueue") == "RecordFunction"
    rule = _of_type("AWS::Events::Rule")["ExecutionEndedRule"]
    assert rule["EventPattern"]["detail"]["status"] == ["FAILED", "TIMED_OUT", "ABORTED"]


def test_every_event_target_has_a_dead_letter_queue_and_every_queue_outlasts_its_function() -> None:
    for name, rule in _of_type("AWS::Events::Rule").items():
        for target in rule.get("Targets", []):
            if _referenced(target["Arn"]) in _of_type("AWS::SQS::Queue"):
                assert _referenced(target["DeadLetterConfig"]["Arn"]) in _dead_letter_queues(), (name, target["Id"])
    functions, queues = _of_type("AWS::Lambda::Function"), _of_type("AWS::SQS::Queue")
    parameters = templates.load(templates.PRODUCT)["Parameters"]
    mapped: dict[str, int] = {}
    for mapping in _of_type("AWS::Lambda::EventSourceMapping").values():
        name = str(_referenced(mapping["FunctionName"]))
        queue = queues[str(_referenced(mapping["EventSourceArn"]))]
        assert int(queue.get("VisibilityTimeout", 30)) >= int(functions[name]["Timeout"]), mapping
        mapped[name] = mapped.get(name, 0) + int(mapping["ScalingConfig"]["MaximumConcurrency"])
    for name, concurrency in mapped.items():
        # A function reserved below what its mappings may run at once has their messages throttled into the DLQs.
        reserved = functions[name]["ReservedConcurrentExecutions"]
        least = int(parameters["FunctionConcurrency"]["MinValue"]) if isinstance(reserved, dict) else int(reserved)
        assert least >= concurrency, (name, least, concurrency)


def test_the_state_machine_logs_without_data_and_every_failure_path_ends_recorded() -> None:
    machine = _of_type("AWS::StepFunctions::StateMachine")["BatchStateMachine"]
    logging = machine["LoggingConfiguration"]
    assert logging["IncludeExecutionData"] is False and logging["Level"] in ("ALL", "ERROR")
    definition = json.loads(templates.STATE_MACHINE.read_text())
    assert definition["TimeoutSeconds"] == BUNDLE_TIME_LIMIT_SECONDS  # what the reconcile function's sweep assumes
    quarantine = definition["States"]["Quarantine"]
    assert quarantine["Catch"][0]["ErrorEquals"] == ["States.ALL"]
    assert definition["States"][quarantine["Catch"][0]["Next"]]["Type"] == "Fail"


def test_a_deployment_refuses_a_concurrency_that_would_throttle_its_queues() -> None:
    from infrastructure.deployment import Deployment

    with pytest.raises(ValueError, match="dead-letter"):
        Deployment(function_concurrency=1)


def test_a_container_fault_is_retried_and_a_refused_shard_is_not() -> None:
    from lambdas.notify import InferenceResult, failure_of

    def failed(error: dict[str, str]) -> str:
        reason = f'ClientError: Received server error from primary with message "{json.dumps({"error": error})}".'
        message = {
            "eventName": "InferenceResult",
            "invocationStatus": "Failed",
            "inferenceId": "i",
            "failureReason": reason,
        }
        return failure_of(InferenceResult.from_sns_envelope(json.dumps({"Message": json.dumps(message)})), 0)[0]

    assert failed({"field": "request", "code": "internal", "message": "internal error 1a2b"}) == "ShardFailed"
    assert (
        failed({"field": "shards[0]", "code": "evaluation_crashed", "message": "the evaluator died"}) == "ShardRejected"
    )
    assert failed({"field": "evaluation_key", "code": "bad_key", "message": "bootstrap keys differ"}) == "ShardRejected"


def test_the_owner_waits_for_the_end_of_the_bundle_as_last_dropped(monkeypatch: pytest.MonkeyPatch, s3: Any) -> None:
    """A record older than the manifest dropped is an earlier drop's; of a result and a record, the newer wins."""
    from client import transfer
    from client.errors import BundleQuarantined, WaitTimeout
    from common.bundle.store import BundleLayout

    layout = BundleLayout(UNIT_BUCKET, "clinic-a")
    times: dict[str, datetime | None] = {}

    def modified(s3: Any, uri: Any) -> datetime | None:
        return times.get(uri.key.rsplit("/", 2)[0].split("/", 1)[0])

    monkeypatch.setattr(transfer, "last_modified", modified)
    s3.put_object(
        Bucket=UNIT_BUCKET, Key="quarantine/clinic-a/b-001/reason.json", Body=b'{"code": "already_delivered"}'
    )
    t = [datetime(2026, 12, 4, hour, tzinfo=UTC) for hour in range(4)]
    times.update(inbox=t[2], quarantine=t[1], outbox=t[3])  # an old record, the new drop's result
    assert transfer.wait(s3, layout, "b-001", timeout=1, progress=False) == layout.result_manifest("b-001")
    times.update(inbox=t[1], outbox=t[0], quarantine=t[2])  # a delivered id dropped again: refused after
    with pytest.raises(BundleQuarantined):
        transfer.wait(s3, layout, "b-001", timeout=1, progress=False)
    times.update(inbox=t[3], outbox=t[0], quarantine=t[2])  # both older than the drop: still running
    with pytest.raises(WaitTimeout):
        transfer.wait(s3, layout, "b-001", timeout=0.5, progress=False)
