"""The encrypted inference path on the local stack: an approved model is deployed to an async endpoint, a
batch owner's client makes keys and a bundle, the endpoint evaluates its shards in real FHE, the client
decrypts. Also: the reference request, key reuse, secrecy of keys and plaintext, and bad bundles."""

from __future__ import annotations

import io
import json
import os
import signal
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from client.decrypt import decrypt_result
from client.encrypt import encrypt_rows
from client.model import ClientModel, ensure_keys, fetch_model, upload_evaluation_key
from client.transfer import download_result, submit
from common import artifacts, aws
from common.archives import extract_tar
from common.bundle.manifest import Manifest, parse_manifest
from common.bundle.messages import ShardRequest, parse_shard_result
from common.bundle.schema import MANIFEST_NAME, sha256_hex
from common.bundle.store import BundleLayout, put_bundle, result_manifest, write_result_manifest
from common.model_package import client_artifacts_uri
from common.s3uri import S3Uri, download_prefix, ensure_bucket
from common.settings import EndpointSettings
from local import lifecycle
from pipelines import runs
from pipelines.approval import approve
from pipelines.endpoint import deploy_endpoint
from tests.integration.helpers import OWNER, STANDALONE_BUNDLES, STANDALONE_PIPELINE, ensure_standalone_role
from tests.leaks import plaintext_fragments, private_key_fragments

pytestmark = pytest.mark.integration

GROUP = "fhe-inference-tests"
BUCKET = STANDALONE_BUNDLES
ENDPOINT = "fhe-inference-test"
SETTINGS = STANDALONE_PIPELINE
SAMPLES = 200
SHARD_SIZE = 50
NOTIFICATION_TIMEOUT = 600.0


@dataclass
class Deployment:
    package_arn: str
    endpoint: dict[str, Any]
    queue_url: str
    model_files: Path  # the whole model.tar.gz, for the test's clear reference only
    log_offsets: dict[Path, int]
    notifications: list[dict[str, Any]]


def _log_files() -> list[Path]:
    return sorted(p for p in lifecycle.stack_dir().rglob("*.log") if p.is_file())


@pytest.fixture(scope="module")
def deployment(local_stack: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    ensure_standalone_role()
    runs.upsert(SETTINGS)
    runs.stage_dataset(SETTINGS, "breast_cancer")
    execution = runs.start(SETTINGS, [{"Name": "ModelPackageGroupName", "Value": GROUP}])
    runs.follow(execution, 900, out=io.StringIO())
    steps = aws.client("sagemaker").list_pipeline_execution_steps(PipelineExecutionArn=execution)
    register = next(s for s in steps["PipelineExecutionSteps"] if s["StepName"] == "Register")
    package_arn = register["Metadata"]["RegisterModel"]["Arn"]
    assert approve(package_arn, GROUP, "Approved", "integration test")["status"] == "Approved"

    sns, sqs = aws.client("sns"), aws.client("sqs")
    queue_url = sqs.create_queue(QueueName="fhe-test-notifications")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    topics = []
    for name in ("fhe-test-success", "fhe-test-errors"):
        topic = sns.create_topic(Name=name)["TopicArn"]
        sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)
        topics.append(topic)
    # As on AWS (and enforced locally), the queue takes SNS's deliveries only if its policy lets the topics send.
    delivery = {"Effect": "Allow", "Principal": {"Service": "sns.amazonaws.com"}, "Action": "sqs:SendMessage",
                "Resource": queue_arn, "Condition": {"ArnEquals": {"aws:SourceArn": topics}}}  # fmt: skip
    policy = json.dumps({"Version": "2012-10-17", "Statement": [delivery]})
    sqs.set_queue_attributes(QueueUrl=queue_url, Attributes={"Policy": policy})
    ensure_bucket(aws.client("s3"), BUCKET)
    log_offsets = {path: path.stat().st_size for path in _log_files()}
    endpoint = deploy_endpoint(
        EndpointSettings(
            package_group=GROUP,
            output_bucket=BUCKET,
            role_arn=SETTINGS.role_arn,
            endpoint_name=ENDPOINT,
            success_topic_arn=topics[0],
            error_topic_arn=topics[1],
        ),
        wait_seconds=300,
    )
    assert endpoint["status"] == "InService"
    package = aws.client("sagemaker").describe_model_package(ModelPackageName=package_arn)
    model_files = tmp_path_factory.mktemp("model")
    uri = S3Uri.parse(package["InferenceSpecification"]["Containers"][0]["ModelDataUrl"])
    aws.client("s3").download_file(uri.bucket, uri.key, str(model_files / "model.tar.gz"))
    extract_tar(model_files / "model.tar.gz", model_files)
    return Deployment(package_arn, endpoint, queue_url, model_files, log_offsets, [])


def _notifications(deployment: Deployment, inference_ids: set[str]) -> dict[str, dict[str, Any]]:
    """The SageMaker notifications (through SNS → SQS) for ``inference_ids``."""
    sqs = aws.client("sqs")
    found = {n["inferenceId"]: n for n in deployment.notifications if n["inferenceId"] in inference_ids}
    deadline = time.monotonic() + NOTIFICATION_TIMEOUT
    while set(found) != inference_ids:
        assert time.monotonic() < deadline, f"no notification for {inference_ids - set(found)}"
        messages = sqs.receive_message(QueueUrl=deployment.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=2)
        for message in messages.get("Messages", []):
            envelope = json.loads(message["Body"])
            notification = json.loads(envelope["Message"]) if "Message" in envelope else envelope
            deployment.notifications.append(notification)
            if notification["inferenceId"] in inference_ids:
                found[notification["inferenceId"]] = notification
            sqs.delete_message(QueueUrl=deployment.queue_url, ReceiptHandle=message["ReceiptHandle"])
    return found


def _invoke_shards(deployment: Deployment, manifest: Manifest, indexes: list[int] | None = None) -> dict[int, Any]:
    """What the workflow does per shard: a shard request object, then InvokeEndpointAsync."""
    s3, runtime = aws.client("s3"), aws.client("sagemaker-runtime")
    layout = BundleLayout(BUCKET, OWNER)
    manifest_uri = layout.request_manifest(manifest.bundle_id)
    ids = {}
    for index in indexes if indexes is not None else [s.index for s in manifest.shards]:
        request = ShardRequest(
            str(manifest_uri), index, str(layout.result_prefix(manifest.bundle_id).join(f"shards/{index:05d}.out"))
        )
        key = f"requests/{OWNER}/{manifest.bundle_id}/{index:05d}.json"
        s3.put_object(Bucket=BUCKET, Key=key, Body=request.to_json())
        response = runtime.invoke_endpoint_async(
            EndpointName=deployment.endpoint["endpoint"],
            InputLocation=f"s3://{BUCKET}/{key}",
            ContentType="application/json",
            InferenceId=f"{manifest.bundle_id}-{index}",
        )
        assert response["OutputLocation"].endswith(f"{manifest.bundle_id}-{index}.out")
        ids[response["InferenceId"]] = index
    found = _notifications(deployment, set(ids))
    return {ids[i]: n for i, n in found.items()}


def _read(uri: str) -> bytes:
    location = S3Uri.parse(uri)
    body: bytes = aws.client("s3").get_object(Bucket=location.bucket, Key=location.key)["Body"].read()
    return body


class PutCounter:
    """Counts the bytes a boto3 S3 client puts."""

    def __init__(self, s3: Any) -> None:
        self.bytes = 0
        self.calls = 0
        s3.meta.events.register("provide-client-params.s3.PutObject", self._count)

    def _count(self, params: dict[str, Any], **_: Any) -> None:
        body = params.get("Body", b"")
        self.bytes += len(body) if isinstance(body, bytes | bytearray) else 0
        self.calls += 1


@dataclass
class Batch:
    model: ClientModel
    x: np.ndarray  # type: ignore[type-arg]
    manifest: Manifest
    folder: Path
    probabilities: np.ndarray  # type: ignore[type-arg]
    key_bytes_put: int


@pytest.fixture(scope="module")
def home() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="fhe-client-home-") as folder:
        yield Path(folder)


def _breast_cancer_rows() -> np.ndarray:  # type: ignore[type-arg]
    from sklearn.datasets import load_breast_cancer

    return np.asarray(load_breast_cancer().data[:SAMPLES], dtype=np.float64)


@pytest.fixture(scope="module")
def batch(deployment: Deployment, home: Path, tmp_path_factory: pytest.TempPathFactory) -> Batch:
    s3 = aws.client("s3")
    counter = PutCounter(s3)
    model = fetch_model(aws.client("sagemaker"), s3, group=GROUP, home=home)
    assert model.ref.package_arn == deployment.package_arn
    _, uploaded = upload_evaluation_key(s3, BundleLayout(BUCKET, OWNER), model, ensure_keys(model))
    assert uploaded
    x = _breast_cancer_rows()
    folder = tmp_path_factory.mktemp("bundle")
    manifest = encrypt_rows(model, x, folder, shard_size=SHARD_SIZE, progress=False)
    submit(s3, BundleLayout(BUCKET, OWNER), folder, progress=False)
    notifications = _invoke_shards(deployment, manifest)
    assert all(n["invocationStatus"] == "Completed" for n in notifications.values()), notifications
    results = [parse_shard_result(_read(n["responseParameters"]["outputLocation"])) for n in notifications.values()]
    layout = BundleLayout(BUCKET, OWNER)
    request_bytes = _read(str(layout.request_manifest(manifest.bundle_id)))
    answer = result_manifest(manifest, sha256_hex(request_bytes), layout.result_prefix(manifest.bundle_id), results)
    result_uri = write_result_manifest(s3, layout, answer).uri
    downloaded, shards = download_result(s3, result_uri)
    probabilities = decrypt_result(model, downloaded, shards, progress=False)
    return Batch(model, x, manifest, folder, probabilities, counter.bytes)


def test_round_trip_matches_the_clear_model(deployment: Deployment, batch: Batch) -> None:
    from concrete.ml.common.serialization.loaders import loads

    assert batch.manifest.total_samples == SAMPLES and len(batch.manifest.shards) == SAMPLES // SHARD_SIZE
    assert batch.probabilities.shape == (SAMPLES, 2)
    fhe_classes = batch.probabilities.argmax(axis=1)
    clear_model = loads((deployment.model_files / artifacts.MODEL_JSON).read_text())
    scaled = batch.model.preprocessing.transform(batch.x)
    clear_classes = clear_model.predict(scaled, fhe="disable")
    agreement = float((fhe_classes == clear_classes).mean())
    assert agreement >= 0.99, agreement
    float_classes = clear_model.sklearn_model.predict(scaled)
    assert float((fhe_classes == float_classes).mean()) >= 0.95


def test_predictions_file_has_one_row_per_input_row(batch: Batch, tmp_path: Path) -> None:
    from client.decrypt import write_predictions

    out = tmp_path / "predictions.csv"
    write_predictions(out, batch.model.preprocessing.classes, batch.probabilities)
    lines = out.read_text().splitlines()
    assert lines[0].split(",")[:2] == ["row", "predicted_class"]
    assert len(lines) == SAMPLES + 1
    assert [int(line.split(",")[0]) for line in lines[1:]] == list(range(SAMPLES))


def test_client_fetched_client_zip_only_and_keeps_keys_private(batch: Batch) -> None:
    names = {p.name for p in batch.model.folder.iterdir()}
    assert artifacts.CLIENT_ZIP in names and artifacts.SERVER_ZIP not in names
    assert (batch.model.keys_folder.stat().st_mode & 0o777) == 0o700
    key_files = [p for p in batch.model.keys_folder.rglob("*") if p.is_file()]
    assert key_files
    assert all((p.stat().st_mode & 0o777) == 0o600 for p in key_files)


def test_second_bundle_with_the_same_keys_uploads_no_key_bytes(
    deployment: Deployment, batch: Batch, tmp_path: Path
) -> None:
    s3 = aws.client("s3")
    counter = PutCounter(s3)
    key, uploaded = upload_evaluation_key(s3, BundleLayout(BUCKET, OWNER), batch.model, ensure_keys(batch.model))
    assert not uploaded and key.sha256 == batch.manifest.evaluation_key.sha256
    manifest = encrypt_rows(batch.model, batch.x[:10], tmp_path / "b", shard_size=5, progress=False)
    submit(s3, BundleLayout(BUCKET, OWNER), tmp_path / "b", progress=False)
    shard_bytes = sum(s.size for s in manifest.shards)
    manifest_bytes = len((tmp_path / "b" / MANIFEST_NAME).read_bytes())
    assert counter.bytes == shard_bytes + manifest_bytes  # shards and manifest, not one key byte
    assert batch.key_bytes_put >= key.size + SAMPLES  # the first bundle did upload the key
    notifications = _invoke_shards(deployment, manifest)
    assert all(n["invocationStatus"] == "Completed" for n in notifications.values())


def test_reference_request_with_bare_concrete_client(deployment: Deployment, tmp_path: Path) -> None:
    """The original reference deployment's request: keys and query made by concrete-ml's own client."""
    from concrete.ml.common.serialization.loaders import loads
    from concrete.ml.deployment import FHEModelClient

    sagemaker, s3 = aws.client("sagemaker"), aws.client("s3")
    package = sagemaker.describe_model_package(ModelPackageName=deployment.package_arn)
    download_prefix(s3, client_artifacts_uri(package), tmp_path / "client")
    client = FHEModelClient(path_dir=str(tmp_path / "client"), key_dir=str(tmp_path / "keys"))
    client.generate_private_and_evaluation_keys()
    preprocessing = json.loads((tmp_path / "client" / artifacts.PREPROCESSING_JSON).read_text())
    from common.preprocessing import PreprocessingRecord

    record = PreprocessingRecord.from_json(json.dumps(preprocessing))
    x = record.transform(_breast_cancer_rows()[:3])
    clear_model = loads((deployment.model_files / artifacts.MODEL_JSON).read_text())
    for i, row in enumerate(x):
        s3.put_object(Bucket=BUCKET, Key=f"reference/keys-{i}.bin", Body=client.get_serialized_evaluation_keys())
        s3.put_object(
            Bucket=BUCKET, Key=f"reference/query-{i}.bin", Body=client.quantize_encrypt_serialize(row[None, :])
        )
        body = {
            "evaluation_keys_uri": f"s3://{BUCKET}/reference/keys-{i}.bin",
            "encrypted_query_uri": f"s3://{BUCKET}/reference/query-{i}.bin",
        }
        s3.put_object(Bucket=BUCKET, Key=f"reference/request-{i}.json", Body=json.dumps(body).encode())
        response = aws.client("sagemaker-runtime").invoke_endpoint_async(
            EndpointName=deployment.endpoint["endpoint"],
            InputLocation=f"s3://{BUCKET}/reference/request-{i}.json",
            ContentType="application/json",
        )
        notification = _notifications(deployment, {response["InferenceId"]})[response["InferenceId"]]
        assert notification["invocationStatus"] == "Completed", notification
        encrypted_prediction = _read(notification["responseParameters"]["outputLocation"])
        scores = client.deserialize_decrypt_dequantize(encrypted_prediction)
        assert int(np.argmax(scores[0])) == int(clear_model.predict(row[None, :], fhe="disable")[0])


def _resubmit(batch: Batch, bundle_id: str) -> Manifest:
    """The batch's first shard again, as a valid one-shard bundle under a new id."""
    entry = batch.manifest.shards[0]
    manifest = replace(batch.manifest, bundle_id=bundle_id, shards=(entry,))
    shard = (batch.folder / entry.key).read_bytes()
    put_bundle(aws.client("s3"), BundleLayout(BUCKET, OWNER).request_prefix(bundle_id), manifest, lambda _: shard)
    return manifest


def _put_unchecked(bundle_id: str, manifest: Manifest, shard: bytes) -> None:
    """Write a bundle whose shard does not match its manifest (put_bundle would refuse it)."""
    prefix = BundleLayout(BUCKET, OWNER).request_prefix(bundle_id)
    s3 = aws.client("s3")
    s3.put_object(Bucket=BUCKET, Key=prefix.join(manifest.shards[0].key).key, Body=shard)
    s3.put_object(Bucket=BUCKET, Key=prefix.join(MANIFEST_NAME).key, Body=manifest.to_json())


def test_bad_bundles_fail_with_a_named_reason_and_the_endpoint_keeps_serving(
    deployment: Deployment, batch: Batch
) -> None:
    original = batch.manifest
    entry = original.shards[0]
    shard = (batch.folder / entry.key).read_bytes()
    one_shard = replace(original, shards=(entry,))
    other_version = original.model.package_arn.rsplit("/", 1)[0] + "/999"
    cases: dict[str, tuple[Manifest, bytes, str]] = {
        "truncated": (replace(one_shard, bundle_id="bad-truncated"), shard[:-100], "truncated"),
        "checksum": (
            replace(one_shard, bundle_id="bad-checksum", shards=(replace(entry, sha256="0" * 64),)),
            shard,
            "checksum",
        ),
        "other-model": (
            parse_manifest(
                {
                    **replace(one_shard, bundle_id="bad-other-model").to_dict(),
                    "model": {
                        "package_arn": other_version,
                        "package_group": original.model.package_group,
                        "package_version": 999,
                    },
                }
            ),
            shard,
            "model_mismatch",
        ),
        "missing-key": (
            replace(
                one_shard,
                bundle_id="bad-missing-key",
                evaluation_key=replace(
                    original.evaluation_key, uri=f"s3://{BUCKET}/keys/{'f' * 64}.ekey", sha256="f" * 64
                ),
            ),
            shard,
            "missing_object",
        ),
        "versions": (
            replace(one_shard, bundle_id="bad-versions", versions={**original.versions, "concrete_python": "2.9.0"}),
            shard,
            "version_mismatch",
        ),
    }
    for name, (manifest, data, code) in cases.items():
        _put_unchecked(manifest.bundle_id, manifest, data)
        notification = _invoke_shards(deployment, manifest, [0])[0]
        assert notification["invocationStatus"] == "Failed", name
        failure = json.loads(_read(notification["responseParameters"]["failureLocation"]))
        assert failure["error"]["code"] == code, (name, failure)
        assert failure["error"]["field"] in notification["failureReason"], name
        # The next valid request is served.
        good = _resubmit(batch, f"good-after-{name}")
        assert _invoke_shards(deployment, good, [0])[0]["invocationStatus"] == "Completed", name


def test_no_private_key_or_plaintext_leaves_the_client(deployment: Deployment, batch: Batch) -> None:
    s3 = aws.client("s3")
    blobs: dict[str, bytes] = {}
    # Everything the endpoint and the client wrote is in the bundle bucket, the endpoint's responses included.
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        for obj in page.get("Contents", []):
            blobs[f"s3://{BUCKET}/{obj['Key']}"] = _read(f"s3://{BUCKET}/{obj['Key']}")
    assert any(name.startswith(f"s3://{BUCKET}/responses/{ENDPOINT}/") for name in blobs)
    assert any(name.endswith(".ekey") for name in blobs) and any(name.endswith(".out") for name in blobs)
    for index, notification in enumerate(deployment.notifications):
        blobs[f"sns#{index}"] = json.dumps(notification).encode()
    for path in _log_files():
        with path.open("rb") as handle:
            handle.seek(deployment.log_offsets.get(path, 0))
            blobs[str(path)] = handle.read()
    assert any("container.log" in name for name in blobs), "the endpoint's log must be scanned"

    evaluation_key = ensure_keys(batch.model)
    secrets = private_key_fragments(batch.model, evaluation_key)
    plaintext = plaintext_fragments(batch.x, batch.model.preprocessing.transform(batch.x))
    assert len(secrets) >= 50 and len(plaintext) > 1000, (len(secrets), len(plaintext))
    for name, blob in blobs.items():
        assert not any(fragment in blob for fragment in secrets), f"private key bytes in {name}"
        leaked = [f for f in plaintext if f in blob]
        assert not leaked, f"plaintext {leaked[:3]} in {name}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its killed parent) counts as gone.
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "State:\tZ" in status.read_text())


def test_endpoint_survives_a_killed_local_sagemaker(deployment: Deployment, batch: Batch) -> None:
    service = lifecycle.local_sagemaker()
    pid = service.pid()
    assert pid is not None
    containers = [int(p.read_text()) for p in lifecycle.sagemaker_state_dir().glob("endpoints/*/*/container.pid")]
    assert containers and all(_alive(c) for c in containers)
    os.kill(pid, signal.SIGKILL)  # no chance to stop its serving processes
    deadline = time.monotonic() + 30
    while service.pid() is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    lifecycle.up()
    sagemaker = aws.client("sagemaker")
    deadline = time.monotonic() + 300
    while sagemaker.describe_endpoint(EndpointName=deployment.endpoint["endpoint"])["EndpointStatus"] != "InService":
        assert time.monotonic() < deadline
        time.sleep(1)
    deadline = time.monotonic() + 30
    while any(_alive(c) for c in containers) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not any(_alive(c) for c in containers), "the killed server's serving processes must be stopped"
    good = _resubmit(batch, "good-after-restart")
    assert _invoke_shards(deployment, good, [0])[0]["invocationStatus"] == "Completed"
