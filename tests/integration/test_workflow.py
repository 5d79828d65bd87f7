"""The batch workflow on the local stack, deployed by fhe-deploy from infrastructure/*.yaml: S3 drop → EventBridge →
SQS → start → Step Functions (the real ASL) → the real Lambda handlers → the async endpoint (real FHE) → outbox,
and every way a bundle can fail."""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from botocore.exceptions import ClientError

from client.batch_client import BatchClient, ClientSettings
from client.decrypt import decrypt_result
from client.encrypt import encrypt_rows
from client.model import ClientModel
from client.transfer import download_result, submit
from common import aws
from common.bundle.manifest import Manifest, ModelRef, shard_key
from common.bundle.schema import MANIFEST_NAME, MAX_SHARDS
from common.bundle.store import BundleLayout, object_exists
from common.stack_outputs import read_outputs
from common.workflow import bundle_executions, executed_states, execution_bundle
from containers.training.data import sample_records
from infrastructure import templates
from pipelines.clear_predictions import clear_classes
from tests import limits
from tests.integration.helpers import (
    OWNER,
    Served,
    bundle_execution,
    deploy_and_serve,
    deployment_for,
    drop,
    injected_faults,
    settle,
)

pytestmark = pytest.mark.integration

CONCURRENCY = 2  # reserved concurrency of each workflow function in these tests
SETTLE_TIMEOUT = 600.0
SCALE_IN_COOLDOWN = 20  # seconds: the endpoint goes back to zero instances between tests
DEPLOYMENT = deployment_for(
    "workflow",
    function_concurrency=CONCURRENCY,
    max_instances=2,
    invocations_per_instance=2,
    scale_in_cooldown=SCALE_IN_COOLDOWN,
    scale_out_cooldown=5,
    quarantine_alarm_per_hour=1,
)


@cache
def _layout() -> BundleLayout:
    return BundleLayout(read_outputs(DEPLOYMENT.prefix)["BundleBucketName"], OWNER)


@dataclass
class Workflow:
    package_arn: str
    endpoint: str  # the one serving the package's version
    stack: dict[str, str]
    model: ClientModel
    x: npt.NDArray[np.float64]
    expected: list[str]  # the clear model's classes for x
    events_queue: str
    s3_events_queue: str
    events: list[dict[str, Any]]
    folder: Path
    served: Served  # its people: the owner acts under its role (Served.as_owner)


def _queue(name: str, pattern: dict[str, Any]) -> str:
    """A queue receiving the events that match ``pattern`` (what a subscriber to the workflow would set up)."""
    sqs, events = aws.client("sqs"), aws.client("events")
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events.put_rule(Name=name, EventPattern=json.dumps(pattern))
    events.put_targets(Rule=name, Targets=[{"Id": "queue", "Arn": arn}])
    return str(url)


@pytest.fixture(scope="module")
def workflow(local_stack: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Workflow:
    served = deploy_and_serve(DEPLOYMENT, "workflow tests")
    outputs, package_arn = served.outputs, served.package_arn
    events_queue = _queue("fhe-workflow-test-events", {"source": ["fhe.batch-inference"]})
    s3_pattern = {"source": ["aws.s3"], "detail": {"bucket": {"name": [_layout().bucket]}}}
    s3_events_queue = _queue("fhe-workflow-test-s3-events", s3_pattern)
    with served.as_owner():
        model = _client(outputs, tmp_path_factory.mktemp("home")).keys().model
    x = sample_records(64)
    return Workflow(
        package_arn,
        served.endpoint,
        outputs,
        model,
        x,
        clear_classes(package_arn, x),
        events_queue,
        s3_events_queue,
        [],
        tmp_path_factory.mktemp("bundles"),
        served,
    )


def _client(outputs: dict[str, str], home: Path, owner: str = OWNER) -> BatchClient:
    """A batch owner's client on the deployment of ``outputs``, with its own home."""
    return BatchClient(ClientSettings.for_deployment(outputs, owner, home=home))


def _drop(w: Workflow, bundle_id: str, rows: slice, shard_size: int) -> Manifest:
    return _drop_rows(w, bundle_id, w.x[rows], shard_size)


def _drop_rows(
    w: Workflow, bundle_id: str, x: npt.NDArray[np.float64], shard_size: int, *, skip_shard: bool = False
) -> Manifest:
    """The owner's drop, under its role."""
    with w.served.as_owner():
        return drop(_layout(), w.model, x, w.folder / bundle_id, shard_size=shard_size, skip_shard=skip_shard)


def _settle(w: Workflow, bundle_id: str, timeout: float = SETTLE_TIMEOUT) -> dict[str, Any]:
    return settle(w.stack["StateMachineArn"], bundle_id, timeout)


def _history(execution_arn: str) -> list[dict[str, Any]]:
    return limits.history(aws.client("stepfunctions"), execution_arn)


def _shard_histories(execution_arn: str) -> list[str]:
    """The histories of the bundle's shard executions (the Distributed Map's children), as text."""
    sfn = aws.client("stepfunctions")
    return [json.dumps(limits.history(sfn, arn), default=str) for arn in limits.children(sfn, execution_arn)]


def _receive(queue_url: str, wait: float = 1.0) -> list[dict[str, Any]]:
    sqs = aws.client("sqs")
    received = []
    messages = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=int(wait))
    for message in messages.get("Messages", []):
        received.append(json.loads(message["Body"]))
        sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
    return received


def _events(w: Workflow, bundle_id: str, detail_type: str, timeout: float = 30.0) -> list[dict[str, Any]]:
    """The workflow's events about ``bundle_id`` of one type (waits for the first)."""
    deadline = time.monotonic() + timeout
    while True:
        w.events.extend(_receive(w.events_queue))
        found = [e for e in w.events if e["detail-type"] == detail_type and e["detail"]["bundle_id"] == bundle_id]
        if found or time.monotonic() > deadline:
            return found


def _quarantine_reason(bundle_id: str) -> dict[str, Any]:
    uri = _layout().quarantine_reason(bundle_id)
    reason: dict[str, Any] = json.loads(aws.client("s3").get_object(Bucket=uri.bucket, Key=uri.key)["Body"].read())
    return reason


def _inbox(bundle_id: str) -> list[str]:
    prefix = _layout().request_prefix(bundle_id).key + "/"
    listed = aws.client("s3").list_objects_v2(Bucket=_layout().bucket, Prefix=prefix)
    return sorted(o["Key"] for o in listed.get("Contents", []))


def _assert_quarantined(w: Workflow, bundle_id: str, execution: dict[str, Any], inbox: list[str]) -> dict[str, Any]:
    assert execution["status"] == "FAILED" and execution.get("error") == "BundleQuarantined", execution
    reason = _quarantine_reason(bundle_id)
    assert _inbox(bundle_id) == inbox, "the inbox objects must stay"
    assert reason["inbox_objects"] == inbox
    assert not object_exists(aws.client("s3"), _layout().result_manifest(bundle_id))
    [event] = _events(w, bundle_id, "Bundle Quarantined")
    assert event["detail"]["reason_uri"].endswith(f"quarantine/{OWNER}/{bundle_id}/reason.json")
    return reason


def _instances(endpoint_name: str) -> int:
    endpoint = aws.client("sagemaker").describe_endpoint(EndpointName=endpoint_name)
    assert endpoint["EndpointStatus"] == "InService", "an endpoint at zero instances is still in service"
    return int(endpoint["ProductionVariants"][0]["CurrentInstanceCount"])


def _wait_for_instances(endpoint_name: str, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while (current := _instances(endpoint_name)) != count:
        assert time.monotonic() < deadline, f"{current} instances after {timeout:.0f} s, expected {count}"
        time.sleep(1.0)


class InstanceWatch(threading.Thread):
    """The endpoint's instance counts, sampled while a block runs."""

    def __init__(self, endpoint_name: str) -> None:
        super().__init__(daemon=True)
        self.endpoint_name = endpoint_name
        self.seen: list[int] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.5):
            self.seen.append(_instances(self.endpoint_name))

    def __enter__(self) -> InstanceWatch:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.join()


def test_an_idle_endpoint_is_at_zero_and_a_dropped_bundle_brings_an_instance_back(workflow: Workflow) -> None:
    _wait_for_instances(workflow.endpoint, 0, timeout=SCALE_IN_COOLDOWN + 60)  # deployed, then idle for the cooldown
    with InstanceWatch(workflow.endpoint) as watch:
        _drop(workflow, "from-zero", slice(0, 4), shard_size=2)
        execution = _settle(workflow, "from-zero")
    assert execution["status"] == "SUCCEEDED", execution
    assert max(watch.seen) >= 1, watch.seen
    _wait_for_instances(workflow.endpoint, 0, timeout=SCALE_IN_COOLDOWN + 60)
    scaling = aws.client("application-autoscaling")
    resource = f"endpoint/{workflow.endpoint}/variant/AllTraffic"
    activities = scaling.describe_scaling_activities(ServiceNamespace="sagemaker", ResourceId=resource)
    descriptions = [a["Description"] for a in activities["ScalingActivities"]]
    assert (
        "Setting desired instance count to 1." in descriptions
        and "Setting desired instance count to 0." in descriptions
    )


def test_a_burst_of_six_bundles_scales_out_to_two_instances_and_all_complete(workflow: Workflow) -> None:
    bundles = [f"scale-out-{i}" for i in range(6)]
    # Each shard holds its instance a second, so a backlog builds however fast the shards arrive (with IAM
    # enforced, every call's authorization slows their arrival, and one instance kept up with them).
    slow = [{"input_contains": f"requests/{OWNER}/scale-out-", "delay_seconds": 1}]
    with injected_faults(workflow.endpoint, slow), InstanceWatch(workflow.endpoint) as watch:
        for i, bundle_id in enumerate(bundles):
            _drop(workflow, bundle_id, slice(8 * i, 8 * i + 8), shard_size=1)
        outcomes = {bundle_id: _settle(workflow, bundle_id)["status"] for bundle_id in bundles}
    assert set(outcomes.values()) == {"SUCCEEDED"}, outcomes
    assert max(watch.seen) == DEPLOYMENT.max_instances, watch.seen


def test_the_endpoints_scaling_reads_back_through_application_autoscaling(workflow: Workflow) -> None:
    scaling, resource = aws.client("application-autoscaling"), f"endpoint/{workflow.endpoint}/variant/AllTraffic"
    [target] = scaling.describe_scalable_targets(ServiceNamespace="sagemaker", ResourceIds=[resource])[
        "ScalableTargets"
    ]
    assert (target["MinCapacity"], target["MaxCapacity"]) == (0, DEPLOYMENT.max_instances)
    policies = scaling.describe_scaling_policies(ServiceNamespace="sagemaker", ResourceId=resource)["ScalingPolicies"]
    assert sorted(p["PolicyType"] for p in policies) == ["StepScaling", "TargetTrackingScaling"]


def test_bundle_runs_through_the_workflow_and_decrypts_to_the_clear_predictions(workflow: Workflow) -> None:
    manifest = _drop(workflow, "first-bundle", slice(0, 48), shard_size=16)
    execution = _settle(workflow, "first-bundle")
    assert execution["status"] == "SUCCEEDED", execution
    states = executed_states(aws.client("stepfunctions"), execution["executionArn"])
    assert states[:4] == ["Validate", "ChoosePath", "InferShards", "Assemble"] and states[-1] == "Delivered", states
    parent = json.dumps(_history(execution["executionArn"]), default=str)
    assert "waitForTaskToken" not in parent, "no shard's work is in the bundle's own history"
    children = _shard_histories(execution["executionArn"])
    assert len(children) == len(manifest.shards), "one child execution per shard"
    assert all("waitForTaskToken" in child for child in children), "each shard waits on its task token"

    result_uri = _layout().result_manifest("first-bundle")
    with workflow.served.as_owner():  # what only the owner can read and open
        result, shards = download_result(aws.client("s3"), result_uri)
        probabilities = decrypt_result(workflow.model, result, shards, progress=False)
    assert result.kind == "result" and len(result.shards) == 3 and result.total_samples == 48
    classes = [workflow.model.preprocessing.classes[i] for i in probabilities.argmax(axis=1)]
    agreement = float(np.mean([a == b for a, b in zip(classes, workflow.expected[:48], strict=True)]))
    assert agreement >= 0.99, agreement

    [event] = _events(workflow, "first-bundle", "Bundle Completed")
    assert event["detail"]["result_manifest"] == str(result_uri) and event["detail"]["samples"] == 48
    assert not object_exists(aws.client("s3"), _layout().quarantine_reason("first-bundle"))


def test_client_run_from_csv_to_predictions_through_the_workflow(workflow: Workflow, tmp_path: Path) -> None:
    rows = 12
    source = tmp_path / "patients.csv"
    names = workflow.model.preprocessing.feature_names
    header = ["label", *reversed(names)]  # column order does not matter, extra columns are ignored
    lines = [
        ",".join(header),
        *(",".join(["?", *(repr(float(v)) for v in reversed(row.tolist()))]) for row in workflow.x[:rows]),
    ]
    source.write_text("\n".join(lines) + "\n")
    out = tmp_path / "predictions.csv"
    with workflow.served.as_owner():
        done = _client(workflow.stack, workflow.model.folder.parents[1]).run(source, out, shard_size=4, timeout=300)
    assert done.encrypted.manifest.total_samples == rows and len(done.encrypted.manifest.shards) == 3
    assert done.keys.uploaded is False and done.encrypted.ignored_columns == ("label",)
    predicted = [line.split(",")[1] for line in out.read_text().splitlines()[1:]]
    assert predicted == workflow.expected[:rows] == done.decrypted.predicted_classes
    assert _settle(workflow, done.bundle_id)["status"] == "SUCCEEDED"


def test_dropped_twice_or_replayed_gives_one_execution_and_one_result(workflow: Workflow) -> None:
    _receive(workflow.s3_events_queue)  # earlier bundles' events
    _drop(workflow, "dropped-twice", slice(0, 8), shard_size=4)
    manifest_key = f"inbox/{OWNER}/dropped-twice/{MANIFEST_NAME}"
    deadline, created = time.monotonic() + 30, None
    while created is None and time.monotonic() < deadline:
        created = next(
            (e for e in _receive(workflow.s3_events_queue) if e["detail"]["object"]["key"] == manifest_key), None
        )
    assert created is not None, "S3 published no Object Created event for the manifest"
    # The same manifest dropped again by its owner (same bytes, same ETag), and the original event delivered twice
    # more (the test's own doing: no actor of the product sends to the queue).
    s3, sqs, bucket = aws.client("s3"), aws.client("sqs"), _layout().bucket
    body = (workflow.folder / "dropped-twice" / MANIFEST_NAME).read_bytes()  # the owner's own copy
    assert body == s3.get_object(Bucket=bucket, Key=manifest_key)["Body"].read()
    with workflow.served.as_owner():
        aws.client("s3").put_object(Bucket=bucket, Key=manifest_key, Body=body, ContentType="application/json")
    for _ in range(2):
        sqs.send_message(QueueUrl=workflow.stack["ManifestQueueUrl"], MessageBody=json.dumps(created))
    execution = _settle(workflow, "dropped-twice")
    assert execution["status"] == "SUCCEEDED", execution
    queue = workflow.stack["ManifestQueueUrl"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # every copy handled by the start function
        attributes = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["All"])["Attributes"]
        if (
            int(attributes["ApproximateNumberOfMessages"]) + int(attributes["ApproximateNumberOfMessagesNotVisible"])
            == 0
        ):
            break
        time.sleep(0.5)
    time.sleep(3.0)
    assert len(bundle_executions(aws.client("stepfunctions"), workflow.stack["StateMachineArn"], "dropped-twice")) == 1
    assert len(_events(workflow, "dropped-twice", "Bundle Completed")) == 1
    outbox = s3.list_objects_v2(Bucket=_layout().bucket, Prefix=f"outbox/{OWNER}/dropped-twice/")["Contents"]
    assert [o["Key"] for o in outbox].count(f"outbox/{OWNER}/dropped-twice/{MANIFEST_NAME}") == 1


def test_a_shard_failing_its_first_attempt_is_retried_and_the_bundle_completes(workflow: Workflow) -> None:
    with injected_faults(workflow.endpoint, [{"input_contains": f"requests/{OWNER}/retry-once/", "fail_first": 1}]):
        _drop(workflow, "retry-once", slice(8, 16), shard_size=4)
        execution = _settle(workflow, "retry-once")
    assert execution["status"] == "SUCCEEDED", execution
    histories = "\n".join(_shard_histories(execution["executionArn"]))
    assert histories.count("ShardFailed") >= 2, "both shards' first attempts failed and were retried"
    assert object_exists(aws.client("s3"), _layout().result_manifest("retry-once"))


def test_a_shard_failing_every_attempt_quarantines_the_bundle_naming_it(workflow: Workflow) -> None:
    with injected_faults(
        workflow.endpoint, [{"input_contains": f"requests/{OWNER}/always-fails/00001", "fail_first": 1000}]
    ):
        _drop(workflow, "always-fails", slice(16, 24), shard_size=4)
        execution = _settle(workflow, "always-fails")
    inbox = [
        f"inbox/{OWNER}/always-fails/{MANIFEST_NAME}",
        f"inbox/{OWNER}/always-fails/shards/00000.fhe",
        f"inbox/{OWNER}/always-fails/shards/00001.fhe",
    ]
    reason = _assert_quarantined(workflow, "always-fails", execution, inbox)
    assert reason["stage"] == "infer" and reason["shard"] == 1 and reason["code"] == "endpoint_failed", reason
    assert "injected fault" in reason["message"]
    # The shard that ran is billed to its owner: its instance's time is in the record.
    assert reason["usage"]["shards"] == 1 and reason["usage"]["serving_seconds"] > 0, reason


def test_the_bundles_own_state_and_history_do_not_grow_with_its_shards(workflow: Workflow) -> None:
    """A Distributed Map over the plan in S3, results at fixed keys: the parent carries the same whatever the
    bundle's size (the limits guard checks every child too)."""
    sfn, measured = aws.client("stepfunctions"), {}
    for shards in (10, 200):
        bundle_id = f"one-sample-shards-{shards}"
        rows = np.resize(workflow.x, (shards, workflow.x.shape[1]))
        _drop_rows(workflow, bundle_id, rows, shard_size=1)
        execution = _settle(workflow, bundle_id, timeout=1800)
        assert execution["status"] == "SUCCEEDED", execution
        assert len(limits.children(sfn, execution["executionArn"])) == shards
        measured[shards] = limits.measure(execution["executionArn"], _history(execution["executionArn"]))
        result, _ = download_result(aws.client("s3"), _layout().result_manifest(bundle_id))
        assert len(result.shards) == shards
    small, large = measured[10], measured[200]
    assert abs(large.largest_payload - small.largest_payload) <= 1024, (small, large)
    assert abs(large.aws_events - small.aws_events) <= 4, (small, large)


def test_a_bundle_over_the_workflows_limits_is_quarantined_at_validate_naming_the_limit(workflow: Workflow) -> None:
    bundle_id = "over-the-shard-limit"
    manifest = encrypt_rows(
        workflow.model, workflow.x[:1], workflow.folder / bundle_id, shard_size=1, bundle_id=bundle_id, progress=False
    )
    [entry] = manifest.shards
    shards = tuple(replace(entry, index=i, key=shard_key(i)) for i in range(MAX_SHARDS + 1))
    layout = _layout()
    body = replace(manifest, shards=shards).to_json()
    with workflow.served.as_owner():
        aws.client("s3").put_object(Bucket=layout.bucket, Key=f"inbox/{OWNER}/{bundle_id}/{MANIFEST_NAME}", Body=body)
    execution = _settle(workflow, bundle_id)
    reason = _assert_quarantined(workflow, bundle_id, execution, [f"inbox/{OWNER}/{bundle_id}/{MANIFEST_NAME}"])
    assert (reason["stage"], reason["field"], reason["code"]) == ("validate", "shards", "too_large"), reason
    assert f"limit of {MAX_SHARDS} shards" in reason["message"], reason


def _shard_requests(bundle_id: str) -> list[str]:
    listed = aws.client("s3").list_objects_v2(Bucket=_layout().bucket, Prefix=f"requests/{OWNER}/{bundle_id}/")
    return [o["Key"] for o in listed.get("Contents", [])]


@pytest.mark.parametrize("case", ["malformed_manifest", "wrong_model_version", "missing_shard"])
def test_a_bad_bundle_is_quarantined_before_any_endpoint_invocation(workflow: Workflow, case: str) -> None:
    bundle_id = f"bad-{case.replace('_', '-')}"
    layout = _layout()
    folder = workflow.folder / bundle_id
    manifest = encrypt_rows(
        workflow.model, workflow.x[24:28], folder, shard_size=2, bundle_id=bundle_id, progress=False
    )
    shards = [entry.key for entry in manifest.shards]
    if case == "missing_shard":
        shards = shards[:1]
    if case == "malformed_manifest":
        body = b'{"format": "fhe-batch-bundle", "format_version": 1, "kind": "request", "bundle_id": '
    elif case == "wrong_model_version":
        other = manifest.model.package_arn.rsplit("/", 1)[0] + "/99"
        body = replace(manifest, model=ModelRef(other, manifest.model.package_group, 99)).to_json()
    else:
        body = manifest.to_json()
    with workflow.served.as_owner():  # a hostile or broken client of the owner's own
        s3 = aws.client("s3")
        for key in shards:
            s3.put_object(
                Bucket=layout.bucket, Key=f"inbox/{OWNER}/{bundle_id}/{key}", Body=(folder / key).read_bytes()
            )
        s3.put_object(Bucket=layout.bucket, Key=f"inbox/{OWNER}/{bundle_id}/{MANIFEST_NAME}", Body=body)
    execution = _settle(workflow, bundle_id)
    inbox = sorted([f"inbox/{OWNER}/{bundle_id}/{MANIFEST_NAME}", *(f"inbox/{OWNER}/{bundle_id}/{k}" for k in shards)])
    reason = _assert_quarantined(workflow, bundle_id, execution, inbox)
    expected = {
        "malformed_manifest": ("not_json", "manifest"),
        "wrong_model_version": ("unknown_model", "model.package_arn"),
        "missing_shard": ("missing_object", "shards[1]"),
    }[case]
    assert reason["stage"] == "validate" and (reason["code"], reason["field"]) == expected, reason
    assert reason["shard"] == (1 if case == "missing_shard" else None)
    assert "InferShards" not in executed_states(aws.client("stepfunctions"), execution["executionArn"])
    assert _shard_requests(bundle_id) == [], "no shard may reach the endpoint"


def _max_overlap(intervals: list[tuple[float, float]]) -> int:
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = peak = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    return peak


def _log_events(function: str) -> list[dict[str, Any]]:
    """Every event of the function's log group (none before its first invocation)."""
    logs = aws.client("logs")
    try:
        pages = logs.get_paginator("filter_log_events").paginate(logGroupName=f"/aws/lambda/{function}")
        return [event for page in pages for event in page.get("events", [])]
    except logs.exceptions.ResourceNotFoundException:
        return []


def _invocations(function: str) -> list[tuple[float, float]]:
    """(start, end) in ms of each invocation, from the REPORT lines of the function's log group."""
    intervals = []
    for event in _log_events(function):
        match = re.search(r"REPORT RequestId: \S+\s+Duration: ([0-9.]+) ms", event["message"])
        if match:
            intervals.append((event["timestamp"] - float(match[1]), float(event["timestamp"])))
    return intervals


def test_ten_bundles_at_once_complete_within_the_lambda_reservation(workflow: Workflow) -> None:
    bundles = [f"burst-{i:02d}" for i in range(10)]
    folders = {}
    for i, bundle_id in enumerate(bundles):  # encrypt first, then drop all at once
        folder = workflow.folder / bundle_id
        encrypt_rows(
            workflow.model, workflow.x[4 * i : 4 * i + 4], folder, shard_size=2, bundle_id=bundle_id, progress=False
        )
        folders[bundle_id] = folder
    layout = _layout()
    with workflow.served.as_owner():  # the owner's clients, made under its role
        threads = [
            threading.Thread(target=submit, args=(aws.client("s3"), layout, folder), kwargs={"progress": False})
            for folder in folders.values()
        ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    outcomes = {bundle_id: _settle(workflow, bundle_id)["status"] for bundle_id in bundles}
    assert set(outcomes.values()) == {"SUCCEEDED"}, outcomes
    lambda_ = aws.client("lambda")
    # As the template declares: the deployment's concurrency, or a number of the function's own (one at a time by
    # design, or what its SQS mappings may run at once).
    functions = [
        r["Properties"]
        for r in templates.load(templates.PRODUCT)["Resources"].values()
        if r["Type"] == "AWS::Lambda::Function"
    ]
    declared = {
        str(f["FunctionName"]["Fn::Sub"]).removeprefix("${Prefix}"): f["ReservedConcurrentExecutions"]
        for f in functions
    }
    for function in workflow.stack["FunctionNames"].split(","):
        reserved = lambda_.get_function_concurrency(FunctionName=function)["ReservedConcurrentExecutions"]
        expected = declared[function.removeprefix(DEPLOYMENT.prefix)]
        assert reserved == (CONCURRENCY if isinstance(expected, dict) else int(expected)), function
        intervals = _invocations(function)
        assert _max_overlap(intervals) <= reserved, (function, _max_overlap(intervals), reserved)
    for name in ("start", "validate", "invoke-shard", "notify", "assemble"):
        function = next(f for f in workflow.stack["FunctionNames"].split(",") if f.endswith(f"-{name}"))
        assert _invocations(function), f"{function} never ran"


def test_workflow_logs_and_records_carry_no_plaintext(workflow: Workflow) -> None:
    texts = []
    for function in workflow.stack["FunctionNames"].split(","):
        texts += [e["message"] for e in _log_events(function)]
    s3 = aws.client("s3")
    for prefix in ("quarantine/", "requests/"):
        listed = s3.list_objects_v2(Bucket=_layout().bucket, Prefix=prefix).get("Contents", [])
        texts += [s3.get_object(Bucket=_layout().bucket, Key=o["Key"])["Body"].read().decode() for o in listed]
    assert len(texts) > 50, "the scan must see the workflow's logs"
    blob = "\n".join(texts)
    values = {repr(float(v)) for v in workflow.x.ravel()} | {f"{v:g}" for v in workflow.x.ravel()}
    leaked = [v for v in values if len(v) >= 6 and v in blob]
    assert not leaked, leaked[:5]


def test_heartbeat_function_runs_on_its_schedule(workflow: Workflow) -> None:
    function = next(f for f in workflow.stack["FunctionNames"].split(",") if f.endswith("-heartbeat"))
    deadline = time.monotonic() + 150  # the rule fires every minute
    while True:
        messages = [e["message"] for e in _log_events(function)]
        rounds = [m for m in messages if "heartbeat round" in m]
        if rounds or time.monotonic() > deadline:
            break
        time.sleep(5)
    assert rounds, "the scheduled heartbeat never ran"
    assert not any("Traceback" in m for m in messages), messages[-5:]


RECONCILE_TIMEOUT = 180.0  # the status event, its queue, the reconcile function's mapping


def _record_for_owner(
    w: Workflow, bundle_id: str, timeout: float = RECONCILE_TIMEOUT, **expected: Any
) -> dict[str, Any]:
    """The bundle's quarantine record, once it says ``expected``, read under the owner's own role: what the owner's
    ``fhe-client wait`` finds."""
    uri = _layout().quarantine_reason(bundle_id)
    deadline, record = time.monotonic() + timeout, None
    with w.served.as_owner():
        s3 = aws.client("s3")
        while time.monotonic() < deadline:
            if object_exists(s3, uri):
                record = json.loads(s3.get_object(Bucket=uri.bucket, Key=uri.key)["Body"].read())
                if all(record.get(k) == v for k, v in expected.items()):
                    return dict(record)
            time.sleep(2.0)
    raise AssertionError(f"bundle {bundle_id}: no record saying {expected} after {timeout} s; last: {record}")


def _function_role(name: str) -> str:
    arn = aws.client("lambda").get_function_configuration(FunctionName=f"{DEPLOYMENT.prefix}-{name}")["Role"]
    return str(arn).rsplit("/", 1)[1]


def _running_in(w: Workflow, bundle_id: str, state: str, timeout: float = SETTLE_TIMEOUT) -> str:
    """The bundle's execution ARN, once it has entered ``state``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        execution = bundle_execution(w.stack["StateMachineArn"], bundle_id)
        if execution is not None:
            assert execution["status"] == "RUNNING", execution
            if state in executed_states(aws.client("stepfunctions"), execution["executionArn"]):
                return str(execution["executionArn"])
        time.sleep(1.0)
    raise AssertionError(f"bundle {bundle_id} did not reach {state} in {timeout} s")


def test_a_bundle_whose_quarantine_step_is_denied_its_bucket_still_ends_with_its_reason(workflow: Workflow) -> None:
    """The Quarantine step fails (AccessDenied on its bucket): the execution fails, and the reconcile function
    records the reason the step was given, from the execution's history."""
    iam, role = aws.client("iam"), _function_role("quarantine")
    deny = {"Effect": "Deny", "Action": "s3:PutObject", "Resource": f"arn:aws:s3:::{_layout().bucket}/quarantine/*"}
    iam.put_role_policy(
        RoleName=role,
        PolicyName="injected-deny",
        PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [deny]}),
    )
    try:
        manifest = _drop_rows(workflow, "quarantine-denied", workflow.x[:8], shard_size=4, skip_shard=True)
        execution = _settle(workflow, "quarantine-denied")
    finally:
        iam.delete_role_policy(RoleName=role, PolicyName="injected-deny")
    assert execution["status"] == "FAILED" and execution.get("error") == "QuarantineFailed", execution
    record = _record_for_owner(workflow, "quarantine-denied", execution=execution["executionArn"])
    assert (record["stage"], record["code"], record["shard"]) == ("validate", "missing_object", 1), record
    assert record["recorded_by"] == "reconcile" and record["execution_status"] == "FAILED"
    assert record["inbox_objects"] == _inbox("quarantine-denied") and len(manifest.shards) == 2
    [event] = _events(workflow, "quarantine-denied", "Bundle Quarantined", timeout=60)
    assert event["detail"]["code"] == "missing_object"


def test_a_stopped_execution_ends_with_a_record(workflow: Workflow) -> None:
    slow = [{"input_contains": f"requests/{OWNER}/stopped-by-hand/", "delay_seconds": 40}]
    with injected_faults(workflow.endpoint, slow):
        _drop(workflow, "stopped-by-hand", slice(24, 28), shard_size=4)
        arn = _running_in(workflow, "stopped-by-hand", "InferShards")
        aws.client("stepfunctions").stop_execution(executionArn=arn, error="Operator", cause="stopped by hand")
        record = _record_for_owner(workflow, "stopped-by-hand", execution=arn)
    assert (record["stage"], record["code"], record["execution_status"]) == ("workflow", "execution_stopped", "ABORTED")
    assert not object_exists(aws.client("s3"), _layout().result_manifest("stopped-by-hand"))


def test_an_execution_past_the_workflows_time_limit_ends_with_a_record(workflow: Workflow) -> None:
    """The state machine's time limit (TimeoutSeconds, a week) shortened for this bundle only: the execution
    times out while its shard is at the endpoint."""
    sfn, arn = aws.client("stepfunctions"), workflow.stack["StateMachineArn"]
    described = sfn.describe_state_machine(stateMachineArn=arn)
    definition = json.loads(described["definition"])
    slow = [{"input_contains": f"requests/{OWNER}/timed-out/", "delay_seconds": 40}]
    sfn.update_state_machine(stateMachineArn=arn, definition=json.dumps({**definition, "TimeoutSeconds": 15}))
    with injected_faults(workflow.endpoint, slow):  # the shard is at the endpoint past the limit
        try:
            _drop(workflow, "timed-out", slice(28, 32), shard_size=4)
            execution = _running_in(workflow, "timed-out", "Validate")
        finally:
            sfn.update_state_machine(stateMachineArn=arn, definition=described["definition"])
        ended = _settle(workflow, "timed-out", timeout=120)
        assert (ended["status"], ended.get("error")) == ("TIMED_OUT", "States.Timeout"), ended
        record = _record_for_owner(workflow, "timed-out", execution=execution)
    assert (record["stage"], record["code"], record["execution_status"]) == (
        "workflow",
        "execution_timed_out",
        "TIMED_OUT",
    )


def test_a_dead_lettered_start_message_ends_with_a_record(workflow: Workflow) -> None:
    """A manifest's event that the start function could not handle past its retries, as the manifest queue
    dead-letters it: the bundle is quarantined as not started, naming what to do."""
    key = f"inbox/{OWNER}/never-started/{MANIFEST_NAME}"
    event = {
        "version": "0",
        "id": "dead-lettered-start",
        "detail-type": "Object Created",
        "source": "aws.s3",
        "account": "000000000000",
        "time": "2026-12-04T00:00:00Z",
        "region": aws.region(),
        "resources": [f"arn:aws:s3:::{_layout().bucket}"],
        "detail": {
            "version": "0",
            "bucket": {"name": _layout().bucket},
            "object": {"key": key, "size": 100, "etag": "0123456789abcdef", "sequencer": "1"},
            "request-id": "r",
            "requester": "000000000000",
            "source-ip-address": "127.0.0.1",
            "reason": "PutObject",
        },
    }
    aws.client("sqs").send_message(QueueUrl=workflow.stack["ManifestDeadLetterQueueUrl"], MessageBody=json.dumps(event))
    record = _record_for_owner(workflow, "never-started", code="start_failed")
    assert record["stage"] == "start" and record["execution"] is None and "drop" in record["message"]
    assert bundle_execution(workflow.stack["StateMachineArn"], "never-started") is None


def test_every_dead_letter_queue_of_the_deployment_has_an_alarm(workflow: Workflow) -> None:
    sqs, cloudwatch = aws.client("sqs"), aws.client("cloudwatch")
    dead_letters = [v for k, v in workflow.stack.items() if k.endswith("DeadLetterQueueUrl")]
    assert len(dead_letters) == 5, workflow.stack
    alarms = cloudwatch.describe_alarms(AlarmNamePrefix=f"{DEPLOYMENT.prefix}-")["MetricAlarms"]
    watched = {
        d["Value"] for a in alarms for d in a["Dimensions"] if a["AlarmActions"] == [workflow.stack["AlarmTopicArn"]]
    }
    for url in dead_letters:
        name = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        assert name.rsplit(":", 1)[1] in watched, (url, watched)


def test_no_execution_ended_without_a_result_or_a_quarantine_record(workflow: Workflow) -> None:
    """Over every bundle this module ran: a succeeded execution left a result manifest, a failed one a reason."""
    sfn, s3 = aws.client("stepfunctions"), aws.client("s3")
    pages = sfn.get_paginator("list_executions").paginate(stateMachineArn=workflow.stack["StateMachineArn"])
    ended = [e for page in pages for e in page["executions"] if e["status"] != "RUNNING"]
    assert len(ended) > 20, "the module's bundles"
    for execution in ended:
        bundle = execution_bundle(sfn, execution["executionArn"])  # of any owner
        record = bundle.layout.result_manifest(bundle.bundle_id) if execution["status"] == "SUCCEEDED" else None
        record = record or bundle.layout.quarantine_reason(bundle.bundle_id)
        assert object_exists(s3, record), (execution["name"], execution["status"], str(record))


def _denied(call: Any, **kwargs: Any) -> str:
    """The error code of a call the local AWS must refuse."""
    with pytest.raises(ClientError) as refused:
        call(**kwargs)
    return str(refused.value.response["Error"]["Code"])


def _first_key(s3: Any, bucket: str, suffix: str, prefix: str = "") -> str:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return str(next(o["Key"] for page in pages for o in page.get("Contents", []) if o["Key"].endswith(suffix)))


def test_batch_owners_are_isolated_from_one_another(workflow: Workflow, tmp_path: Path) -> None:
    """Two owners (fhe-deploy owner add), each working under its own role through the people's profiles, on the
    local AWS that enforces IAM: both use the same bundle id, both are delivered; owner A's credentials are refused
    B's result, B's listing, a manifest under B's bundle id, server.zip and the training data (AccessDenied), and
    B's result is untouched by it all."""
    from containers.training.data import write_records_csv
    from infrastructure import owners

    for owner in ("clinic-a", "clinic-b"):
        workflow.served.add_owner(owner)  # administrator: fhe-deploy owner add
    assert set(owners.owners(DEPLOYMENT.prefix)) >= {"clinic-a", "clinic-b"}
    admin = aws.client("s3")
    models, data = workflow.stack["ModelBucketName"], workflow.stack["DataBucketName"]
    # server.zip reaches S3 only inside the model artifact (model.tar.gz); the client artifacts leave it out.
    server_zip, training_data = _first_key(admin, models, "/model.tar.gz"), _first_key(admin, data, ".csv")
    rows = {"clinic-a": slice(40, 43), "clinic-b": slice(43, 47)}
    delivered = {}
    for owner, picked in rows.items():
        source = write_records_csv(
            tmp_path / f"{owner}.csv", workflow.model.preprocessing.feature_names, workflow.x[picked]
        )
        client = _client(workflow.stack, tmp_path / f"home-{owner}", owner)
        with workflow.served.as_owner(owner):  # the client's AWS clients are made under the owner's role
            delivered[owner] = client.run(source, tmp_path / f"{owner}.out.csv", bundle_id="same-id", timeout=300)
        predicted = [line.split(",")[1] for line in (tmp_path / f"{owner}.out.csv").read_text().splitlines()[1:]]
        assert predicted == workflow.expected[picked], owner
        manifest = delivered[owner].submitted.manifest
        assert str(manifest) == f"s3://{_layout().bucket}/inbox/{owner}/same-id/{MANIFEST_NAME}"
    b_result = BundleLayout(_layout().bucket, "clinic-b").result_manifest("same-id")
    with workflow.served.as_owner("clinic-b"):
        before = aws.client("s3").get_object(Bucket=b_result.bucket, Key=b_result.key)["Body"].read()
    bucket = _layout().bucket
    with workflow.served.as_owner("clinic-a"):
        s3 = aws.client("s3")
        assert s3.list_objects_v2(Bucket=bucket, Prefix="outbox/clinic-a/")["KeyCount"] > 0  # its own: granted
        refused = {
            "read B's result": _denied(s3.get_object, Bucket=bucket, Key=b_result.key),
            "list B's prefix": _denied(s3.list_objects_v2, Bucket=bucket, Prefix="outbox/clinic-b/"),
            "list B's inbox": _denied(s3.list_objects_v2, Bucket=bucket, Prefix="inbox/clinic-b/"),
            "put a manifest under B's bundle id": _denied(
                s3.put_object, Bucket=bucket, Key=f"inbox/clinic-b/same-id/{MANIFEST_NAME}", Body=b"{}"
            ),
            "read server.zip": _denied(s3.get_object, Bucket=models, Key=server_zip),
            "read training data": _denied(s3.get_object, Bucket=data, Key=training_data),
        }
    assert set(refused.values()) == {"AccessDenied"}, refused
    with workflow.served.as_owner("clinic-b"):
        after = aws.client("s3").get_object(Bucket=b_result.bucket, Key=b_result.key)["Body"].read()
    assert after == before, "B's result is untouched"
    # Each execution ran its own owner's bundle; asked for one owner's, only that one's is found.
    sfn = aws.client("stepfunctions")
    ran = bundle_executions(sfn, workflow.stack["StateMachineArn"], "same-id")
    assert sorted(execution_bundle(sfn, arn).owner for arn in ran) == ["clinic-a", "clinic-b"]
    assert bundle_executions(sfn, workflow.stack["StateMachineArn"], "same-id", "clinic-b") == [
        arn for arn in ran if execution_bundle(sfn, arn).owner == "clinic-b"
    ]


def _every_log(workflow: Workflow) -> bytes:
    """Every log the deployment and the local stack wrote: the functions' log groups, the local SageMaker's and
    the local AWS's own logs, and every job's and endpoint container's log."""
    from local.lifecycle import stack_dir

    texts = [
        e["message"].encode() for function in workflow.stack["FunctionNames"].split(",") for e in _log_events(function)
    ]
    texts += [path.read_bytes() for path in stack_dir().rglob("*.log") if path.is_file()]
    assert len(texts) > 50, "the scan must see the logs"
    return b"\n".join(texts)


def _every_object(buckets: list[str]) -> bytes:
    s3 = aws.client("s3")
    bodies = []
    for bucket in buckets:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            bodies += [s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for o in page.get("Contents", [])]
    return b"\n".join(bodies)


def test_the_owners_ids_stay_on_its_machine_and_key_its_predictions(workflow: Workflow, tmp_path: Path) -> None:
    """A scoring file with an id column and the owner's labels: predictions.csv is keyed by the ids, the accuracy
    against the labels is printed, and no S3 object of the deployment and no log holds any id value."""
    from audit.collect import estimate_shown

    rows = 6
    ids = [f"{patient}" for patient in np.random.default_rng(11).choice(np.arange(10**8, 10**9), rows, replace=False)]
    names = workflow.model.preprocessing.feature_names
    lines = ["id,label,ward," + ",".join(names)]
    lines += [
        ",".join([patient, expected, "east", *(repr(float(v)) for v in row)])
        for patient, expected, row in zip(
            ids, workflow.expected[50 : 50 + rows], workflow.x[50 : 50 + rows], strict=True
        )
    ]
    source = tmp_path / "scoring.csv"
    source.write_text("\n".join(lines) + "\n")
    out = tmp_path / "predictions.csv"
    client = _client(workflow.stack, workflow.model.folder.parents[1])
    with workflow.served.as_owner():
        done = client.run(source, out, id_columns=["id"], label_column="label", timeout=300)
    written = out.read_text().splitlines()
    assert written[0].startswith("id,row,predicted_class,")
    assert [line.split(",")[0] for line in written[1:]] == ids
    assert [line.split(",")[2] for line in written[1:]] == workflow.expected[50 : 50 + rows]
    assert done.encrypted.ignored_columns == ("ward",) and done.encrypted.id_columns == ("id",)
    accuracy = done.decrypted.accuracy  # labels: the clear model's
    assert accuracy is not None and (accuracy.accuracy, accuracy.correct, accuracy.rows) == (1.0, rows, rows)
    # The estimate made before paying went up beside the manifest, where the audit report reads it.
    made = done.encrypted.estimate
    assert made is not None and made.samples == rows and made.instance_type and made.cost > 0 and made.prices_as_of
    shown = estimate_shown(aws.client("s3"), _layout().estimate(done.bundle_id))
    assert shown is not None and (shown["seconds"], shown["cost"]) == (made.seconds, made.cost)
    stack = workflow.stack
    objects = _every_object([stack["BundleBucketName"], stack["ModelBucketName"], stack["DataBucketName"]])
    logs = _every_log(workflow)
    assert done.bundle_id.encode() in logs, "the scan sees this bundle's logs"
    leaked = [patient for patient in ids if patient.encode() in objects or patient.encode() in logs]
    assert not leaked, leaked


# ---- operating it: what ML ops watch, what each owner used, how an owner leaves ---------------------------------

ALARM_TIMEOUT = 120.0
HEARTBEAT_WAIT = 150.0  # more than two rounds of the heartbeat's schedule


def _alarm_state(name: str) -> str:
    [alarm] = aws.client("cloudwatch").describe_alarms(AlarmNames=[name])["MetricAlarms"]
    return str(alarm["StateValue"])


def test_the_dashboard_and_alarms_are_deployed_and_a_quarantine_puts_its_alarms_in_alarm(workflow: Workflow) -> None:
    """Read back after fhe-deploy up: the dashboard and every alarm. Both alarms a quarantined bundle trips (a failed
    execution, the quarantine rate: 1 an hour in these tests) are set to OK, a bad bundle is dropped, and each goes
    to ALARM as the local CloudWatch evaluates it on the metric the service published; fhe-deploy status, run by ML
    ops, shows the same."""
    from infrastructure import status

    cloudwatch, prefix = aws.client("cloudwatch"), DEPLOYMENT.prefix
    body = json.loads(cloudwatch.get_dashboard(DashboardName=workflow.stack["DashboardName"])["DashboardBody"])
    titles = [w["properties"]["title"] for w in body["widgets"]]
    assert titles == [
        "Bundles per hour",
        "Shard latency (seconds)",
        "Backlog",
        "Endpoint instances per version",
        "FHE seconds per hour",
        "Errors per function",
        "Executions",
        "Dead letters received",
    ]
    deployed = {
        a["AlarmName"]: a
        for a in cloudwatch.describe_alarms(AlarmNamePrefix=f"{prefix}-")["MetricAlarms"]
        if not a["AlarmName"].startswith(f"{DEPLOYMENT.endpoint_name}-v")  # a served version's, of its own stack
    }
    tripped = [f"{prefix}-executions-failed", f"{prefix}-quarantine-rate"]
    assert {*tripped, f"{prefix}-executions-timed-out", f"{prefix}-executions-stopped"} <= set(deployed)
    assert all(a["AlarmActions"] == [workflow.stack["AlarmTopicArn"]] for a in deployed.values())
    assert f"{workflow.endpoint}-no-capacity" in {
        a["AlarmName"] for a in cloudwatch.describe_alarms(AlarmNamePrefix=workflow.endpoint)["MetricAlarms"]
    }, "each served version's alarm for a backlog no instance serves"
    for name in tripped:
        cloudwatch.set_alarm_state(AlarmName=name, StateValue="OK", StateReason="the integration test resets it")
        assert _alarm_state(name) == "OK"
    bundle_id = "alarmed"
    manifest = encrypt_rows(workflow.model, workflow.x[:2], workflow.folder / bundle_id, shard_size=2,
                            bundle_id=bundle_id, progress=False)  # fmt: skip
    with workflow.served.as_owner():  # a manifest whose shard never came: quarantined at Validate
        aws.client("s3").put_object(
            Bucket=_layout().bucket, Key=f"inbox/{OWNER}/{bundle_id}/{MANIFEST_NAME}", Body=manifest.to_json()
        )
    assert _settle(workflow, bundle_id)["status"] == "FAILED"
    deadline = time.monotonic() + ALARM_TIMEOUT
    while {_alarm_state(name) for name in tripped} != {"ALARM"}:
        assert time.monotonic() < deadline, {name: _alarm_state(name) for name in tripped}
        time.sleep(1.0)
    deadline = time.monotonic() + HEARTBEAT_WAIT
    while True:  # the heartbeat publishes each version's instance count once a minute
        with workflow.served.acting("ml-ops"):
            shown = status.status(prefix, hours=1)
        figures = {(f["widget"], f["label"]): f for f in shown["figures"]}
        if any(key[0] == "Endpoint instances per version" for key in figures) or time.monotonic() > deadline:
            break
        time.sleep(5.0)
    assert (figures["Bundles per hour", "quarantined"]["window"] or 0) >= 1
    assert (figures["Executions", "failed (quarantines included)"]["window"] or 0) >= 1
    assert (figures["Bundles per hour", "started"]["window"] or 0) >= 1
    assert any(key[0] == "Endpoint instances per version" for key in figures), "the heartbeat's per-version count"
    assert {a["name"] for a in shown["alarms"] if a["state"] == "ALARM"} >= set(tripped)
    assert "quarantine-rate" in status.describe(shown)


def test_usage_per_owner_attributes_the_endpoints_instance_time_by_busy_share(
    workflow: Workflow, tmp_path: Path
) -> None:
    """Two owners with different workloads (6 shards against 1) on the same endpoint: fhe-audit usage, run by the
    auditor, charges each its share, and the shares add up to the endpoint's instance time within 1%."""
    from audit import cli as audit_cli
    from audit import usage

    workflow.served.add_owner("clinic-u")
    _wait_for_instances(workflow.endpoint, 0, timeout=180)  # earlier bundles' instances gone: the window is these'
    since = datetime.now(tz=UTC)
    _drop(workflow, "usage-heavy", slice(0, 12), shard_size=2)
    other = BundleLayout(_layout().bucket, "clinic-u")
    with workflow.served.as_owner("clinic-u"):  # its own keys, its own bundle
        model = _client(workflow.stack, tmp_path / "home-u", "clinic-u").keys().model
        drop(other, model, workflow.x[12:14], workflow.folder / "usage-light", shard_size=2)
    for bundle_id in ("usage-heavy", "usage-light"):
        assert _settle(workflow, bundle_id)["status"] == "SUCCEEDED"
    _wait_for_instances(workflow.endpoint, 0, timeout=180)  # its scale-in: the window holds every instance second
    until = datetime.now(tz=UTC)
    window = ["--from", since.isoformat(), "--to", until.isoformat(), "--deployment", DEPLOYMENT.prefix, "--quiet"]
    with workflow.served.acting("auditor"):
        deadline = time.monotonic() + 60
        while True:  # the recorder appends each delivery a moment after it
            audit_cli.main(["usage", *window, "--out", str(tmp_path / "usage.json")])
            report = json.loads((tmp_path / "usage.json").read_text())
            rows = {row["owner"]: row for row in report["owners"]}
            if {OWNER, "clinic-u"} <= set(rows) or time.monotonic() > deadline:
                break
            time.sleep(2.0)
        audit_cli.main(["usage", *window, "--format", "csv", "--out", str(tmp_path / "usage.csv")])
    heavy, light = rows[OWNER], rows["clinic-u"]
    assert (heavy["bundles"], heavy["shards"], heavy["samples"]) == (1, 6, 12)
    assert (light["bundles"], light["shards"], light["samples"]) == (1, 1, 2)
    assert heavy["serving_seconds"] > light["serving_seconds"] > 0 and heavy["fhe_seconds"] > 0
    assert heavy["instance_seconds"] > light["instance_seconds"] > 0
    total = report["reconciliation"]["endpoint_instance_seconds"]
    assert total > 0 and usage.UNATTRIBUTED not in rows, report
    assert abs(heavy["instance_seconds"] + light["instance_seconds"] - total) <= 0.01 * total
    # The total is the endpoint's instance time as Application Auto Scaling recorded it, read here on its own: each
    # desired count held from its activity to the next, over the window (the endpoint was at zero at its start).
    scaling = aws.client("application-autoscaling")
    activities = scaling.describe_scaling_activities(
        ServiceNamespace="sagemaker", ResourceId=f"endpoint/{workflow.endpoint}/variant/AllTraffic"
    )["ScalingActivities"]
    changes = sorted(
        (a["EndTime"], int(a["Description"].rsplit(" ", 1)[1].rstrip(".")))
        for a in activities
        if since <= a["EndTime"] < until
    )
    held = sum(count * ((later[0] if later else until) - at).total_seconds()
               for (at, count), later in zip(changes, [*changes[1:], None], strict=True))  # fmt: skip
    assert held > 0 and abs(total - held) <= 0.01 * held, (total, held, changes)
    assert total >= heavy["serving_seconds"] / (DEPLOYMENT.max_instances * DEPLOYMENT.invocations_per_instance)
    assert heavy["cost"] > light["cost"] > 0 and report["currency"] == "USD"
    lines = (tmp_path / "usage.csv").read_text().splitlines()
    assert lines[0].startswith("owner,bundles,quarantined,samples,shards,") and len(lines) == 3


def test_an_owner_removed_with_export_and_erase_leaves_nothing_and_the_audit_log_says_so(
    workflow: Workflow, tmp_path: Path
) -> None:
    """fhe-deploy owner remove clinic-x --export DIR --erase (the administrator): its results copied out with their
    sha256, then no object version left under any of its folders, each step recorded in the audit log, the other
    owner's bundles untouched; the audit report (the auditor) notes the erased bundle instead of failing on it."""
    from audit import collect
    from audit.report import build, sources_for
    from common.bundle.store import OWNER_FOLDERS
    from infrastructure import owners

    started = datetime.now(tz=UTC)
    workflow.served.add_owner("clinic-x")
    leaving = BundleLayout(_layout().bucket, "clinic-x")
    with workflow.served.as_owner("clinic-x"):
        model = _client(workflow.stack, tmp_path / "home-x", "clinic-x").keys().model
        drop(leaving, model, workflow.x[:4], workflow.folder / "leaving", shard_size=2)
    _drop(workflow, "staying", slice(4, 6), shard_size=2)  # the other owner's, at the same time
    for bundle_id in ("leaving", "staying"):
        assert _settle(workflow, bundle_id)["status"] == "SUCCEEDED"
    staying = _layout().result_manifest("staying")
    s3 = aws.client("s3")
    kept = s3.get_object(Bucket=staying.bucket, Key=staying.key)["Body"].read()
    exported_before = sum(
        len(s3.list_objects_v2(Bucket=leaving.bucket, Prefix=f"{top}/clinic-x/").get("Contents", []))
        for top in ("outbox", "quarantine")
    )
    done = owners.offboard(DEPLOYMENT.prefix, "clinic-x", export_to=tmp_path / "export", erase=True,
                           report=lambda line: None)  # fmt: skip
    index = json.loads((tmp_path / "export" / owners.INDEX_NAME).read_text())
    assert {"outbox/clinic-x/leaving/manifest.json", "outbox/clinic-x/leaving/usage.json"} <= {
        e["key"] for e in index["objects"]
    }
    for entry in index["objects"]:  # each exported file is what the bucket held
        data = (tmp_path / "export" / entry["key"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"] and len(data) == entry["size"]
    assert done["exported"]["objects"] == len(index["objects"]) == exported_before and done["removed"] is True
    for top in OWNER_FOLDERS:
        listed = s3.list_object_versions(Bucket=leaving.bucket, Prefix=f"{top}/clinic-x/")
        assert not listed.get("Versions") and not listed.get("DeleteMarkers"), top
    assert done["erased"]["object_versions"] > 0 and "clinic-x" not in owners.owners(DEPLOYMENT.prefix)
    assert done["exported"]["audit_record"] and done["erased"]["audit_record"], "both on record"
    assert s3.get_object(Bucket=staying.bucket, Key=staying.key)["Body"].read() == kept, "the other owner's stays"
    responses = [o["Key"] for o in s3.list_objects_v2(Bucket=leaving.bucket, Prefix="responses/").get("Contents", [])]
    named = [k for k in responses if b"/clinic-x/" in s3.get_object(Bucket=leaving.bucket, Key=k)["Body"].read()]
    assert done["erased"]["responses"] >= 2 and not named, "no endpoint answer names the erased owner any more"
    with workflow.served.acting("auditor"):
        sources = sources_for(DEPLOYMENT.prefix, DEPLOYMENT.pipeline_name, lambda line: None)
        report = build(sources, collect.Window(started, datetime.now(tz=UTC)), settle=60)
    assert report["ok"], [c for c in report["checks"] if not c["ok"]]
    [bundle] = [b for b in report["bundles"] if b["bundle"] == "clinic-x/leaving"]
    assert bundle["erased"]["seq"] == done["erased"]["audit_record"]
    notes = [n for c in report["checks"] for n in c["notes"]]
    assert any("clinic-x/leaving" in n and "erased" in n for n in notes)
    offboarded = {o["kind"]: o for o in report["offboarding"] if o["owner"] == "clinic-x"}
    assert set(offboarded) == {"owner_exported", "owner_erased"}
    assert offboarded["owner_exported"]["objects"] == exported_before
    assert offboarded["owner_erased"]["object_versions"] == done["erased"]["object_versions"]
