"""The real images, built here and run as SageMaker runs them: ``fhe-deploy up --build-images`` builds both with
the container engine (podman on a machine without a daemon, on the registry-free base where the official one
cannot be pulled), the local SageMaker runs the pipeline's jobs and the async endpoint from those images
(``python -m local.lifecycle up --runtime podman``), a bundle goes through the workflow, and the inference image is
started as ``<image> serve`` with the registered model in ``/opt/ml/model`` and asked directly.

Marked ``images`` (it builds two images of about 6 GB): ``pytest -m "not images"`` leaves it out.
``FHE_IMAGE_ENGINE`` picks the engine (default: the first of Docker and podman that works); ``FHE_BASE_IMAGE``
names a base to build on (default: the one ``local/base_image.py`` makes without a registry).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aws_emulators.sagemaker.container_runtime import Container, EngineRuntime, aws_environment

from client.batch_client import BatchClient, ClientSettings
from client.decrypt import decrypt_result
from client.encrypt import encrypt_rows
from client.model import ClientModel, ensure_keys, upload_evaluation_key
from client.transfer import download_result, submit
from common import artifacts, aws
from common.bundle.messages import parse_shard_result
from common.bundle.schema import sha256_hex
from common.bundle.store import BundleLayout, result_manifest, write_result_manifest
from common.model_package import client_artifacts_uri
from common.s3uri import S3Uri, download_prefix, ensure_bucket
from containers.training.data import sample_records
from infrastructure.images import ContainerEngine
from local import lifecycle
from local.base_image import ensure_base_image
from local.ports import free_port
from pipelines.clear_predictions import clear_classes, download_model
from tests.integration.conftest import running_stack
from tests.integration.helpers import OWNER, Served, deploy_and_serve, deployment_for, settle

pytestmark = [pytest.mark.integration, pytest.mark.images]

SAMPLES = 12
SETTLE_TIMEOUT = 900.0
PING_TIMEOUT = 300.0
DIRECT_BUCKET = "fhe-image-test-direct"


@dataclass
class ImageStack:
    served: Served
    engine: ContainerEngine
    pipeline_execution: str
    model: ClientModel


@pytest.fixture(scope="module")
def image_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImageStack]:
    engine = ContainerEngine.find(os.environ.get("FHE_IMAGE_ENGINE", "auto"))
    base = os.environ.get("FHE_BASE_IMAGE") or ensure_base_image(engine)
    # The deployment builds both images into the engine's storage (layers cached after the first build); nothing
    # is pushed: the local SageMaker runs them from there.
    deployment = deployment_for(
        "image", build_images=True, image_engine=engine.name, base_image=base, push_images=False
    )
    with running_stack(tmp_path_factory.mktemp("image-stack"), runtime=engine.name):
        served = deploy_and_serve(deployment, "image tests")
        owner = BatchClient(ClientSettings.for_deployment(served.outputs, OWNER, home=tmp_path_factory.mktemp("home")))
        with served.as_owner():
            model = owner.keys().model
        executions = aws.client("sagemaker").list_pipeline_executions(PipelineName=deployment.pipeline_name)
        latest = executions["PipelineExecutionSummaries"][0]["PipelineExecutionArn"]
        yield ImageStack(served, engine, latest, model)


def test_the_local_sagemaker_runs_the_built_images(image_stack: ImageStack) -> None:
    assert lifecycle.running_runtime(lifecycle.local_sagemaker()) == image_stack.engine.name
    for role in ("Training", "Inference"):
        uri = image_stack.served.outputs[f"{role}ImageUri"]
        assert uri.startswith(image_stack.served.outputs[f"{role}RepositoryUri"] + ":src-")
        assert image_stack.engine.has_image(uri), uri


def test_pipeline_on_the_training_image_succeeds_with_model_and_evaluation(
    image_stack: ImageStack, tmp_path: Path
) -> None:
    sagemaker = aws.client("sagemaker")
    execution = sagemaker.describe_pipeline_execution(PipelineExecutionArn=image_stack.pipeline_execution)
    assert execution["PipelineExecutionStatus"] == "Succeeded"
    steps = sagemaker.list_pipeline_execution_steps(PipelineExecutionArn=image_stack.pipeline_execution)
    by_name = {s["StepName"]: s for s in steps["PipelineExecutionSteps"]}
    assert {by_name[name]["StepStatus"] for name in ("Preprocess", "Train", "Evaluate", "Register")} == {"Succeeded"}
    training_job = sagemaker.describe_training_job(
        TrainingJobName=by_name["Train"]["Metadata"]["TrainingJob"]["Arn"].rsplit("/", 1)[-1]
    )
    assert training_job["AlgorithmSpecification"]["TrainingImage"] == image_stack.served.outputs["TrainingImageUri"]

    folder = download_model(image_stack.served.package_arn, tmp_path / "model")
    for name in (artifacts.CLIENT_ZIP, artifacts.SERVER_ZIP, artifacts.MODEL_JSON, artifacts.PREPROCESSING_JSON):
        assert (folder / name).is_file(), name
    evaluate = by_name["Evaluate"]["Metadata"]["ProcessingJob"]["Arn"].rsplit("/", 1)[-1]
    outputs = sagemaker.describe_processing_job(ProcessingJobName=evaluate)["ProcessingOutputConfig"]["Outputs"]
    location = S3Uri.parse(next(o for o in outputs if o["OutputName"] == "evaluation")["S3Output"]["S3Uri"])
    report = json.loads(
        aws.client("s3").get_object(Bucket=location.bucket, Key=f"{location.key}/evaluation.json")["Body"].read()
    )
    metrics = report["multiclass_classification_metrics"]
    assert metrics["accuracy_fhe_simulation"]["value"] >= 0.85
    assert metrics["fhe_agreement_with_simulation"]["value"] == 1.0


def test_bundle_through_the_workflow_on_the_inference_image_matches_the_clear_model(
    image_stack: ImageStack, tmp_path: Path
) -> None:
    layout = image_stack.served.layout
    x = sample_records(SAMPLES)
    manifest = encrypt_rows(image_stack.model, x, tmp_path / "bundle", shard_size=SAMPLES // 2, progress=False)
    with image_stack.served.as_owner():
        submit(aws.client("s3"), layout, tmp_path / "bundle", progress=False)
    execution = settle(image_stack.served.state_machine_arn, manifest.bundle_id, SETTLE_TIMEOUT)
    assert execution["status"] == "SUCCEEDED", execution
    with image_stack.served.as_owner():
        downloaded, shards = download_result(aws.client("s3"), layout.result_manifest(manifest.bundle_id))
    probabilities = decrypt_result(image_stack.model, downloaded, shards, progress=False)
    classes = image_stack.model.preprocessing.classes
    predicted = [classes[int(i)] for i in probabilities.argmax(axis=1)]
    assert predicted == clear_classes(image_stack.served.package_arn, x)


@dataclass
class Serving:
    url: str
    seconds_to_healthy: float


@pytest.fixture(scope="module")
def serving(image_stack: ImageStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serving]:
    """The inference image started as SageMaker starts it (``<image> serve``), the registered model extracted
    into its ``/opt/ml/model``."""
    root = tmp_path_factory.mktemp("serving")
    download_model(image_stack.served.package_arn, root / "opt/ml/model")
    # These tests serve from a bucket of their own (the deployment's inbox would start the workflow), which the
    # endpoint's role may not read (IAM is enforced): a statement for that bucket is added to the role, for them.
    role = image_stack.served.outputs["EndpointRoleArn"]
    direct = {
        "Effect": "Allow",
        "Action": ["s3:GetObject", "s3:PutObject"],
        "Resource": f"arn:aws:s3:::{DIRECT_BUCKET}/*",
    }
    aws.client("iam").put_role_policy(
        RoleName=role.rsplit("/", 1)[1],
        PolicyName="direct-bucket-for-tests",
        PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [direct]}),
    )
    port = free_port()
    container = Container(
        "fhe-image-test-serve",
        image_stack.served.outputs["InferenceImageUri"],
        ["serve"],
        root,
        {
            **aws_environment(image_stack.served.outputs["EndpointRoleArn"]),
            "SAGEMAKER_BIND_TO_PORT": str(port),
            artifacts.PACKAGE_ARN_VARIABLE: image_stack.served.package_arn,
        },
    )
    runtime = EngineRuntime(image_stack.engine.name)
    command, environment = runtime.command(container)
    started = time.monotonic()
    with (root / "serve.log").open("wb") as log:
        process = subprocess.Popen(command, env=environment, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            assert process.poll() is None, (root / "serve.log").read_text()[-3000:]
            assert time.monotonic() - started < PING_TIMEOUT, "no healthy /ping"
            try:
                with urllib.request.urlopen(url + "/ping", timeout=2) as answer:  # noqa: S310 - loopback
                    if answer.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                time.sleep(0.5)
        seconds = time.monotonic() - started
        print(f"inference image: first healthy /ping {seconds:.1f} s after the container started")
        yield Serving(url, seconds)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        finally:
            runtime.remove(container.name)


def _post(url: str, body: bytes) -> tuple[int, bytes]:
    request = urllib.request.Request(url + "/invocations", data=body, headers={"Content-Type": "application/json"})  # noqa: S310 - loopback
    try:
        with urllib.request.urlopen(request, timeout=600) as answer:  # noqa: S310 - loopback
            return int(answer.status), bytes(answer.read())
    except urllib.error.HTTPError as error:
        return int(error.code), bytes(error.read())


def test_ping_is_healthy(serving: Serving) -> None:
    with urllib.request.urlopen(serving.url + "/ping", timeout=5) as answer:  # noqa: S310 - loopback
        assert answer.status == 200 and json.loads(answer.read())["status"] == "healthy"


def test_shard_request_decrypts_to_the_clear_model(image_stack: ImageStack, serving: Serving, tmp_path: Path) -> None:
    # A bucket of its own: the deployment's inbox would start the workflow on the same bundle.
    s3, layout = aws.client("s3"), BundleLayout(DIRECT_BUCKET, OWNER)
    ensure_bucket(s3, DIRECT_BUCKET)
    x = sample_records(SAMPLES)
    folder = tmp_path / "bundle"
    model = image_stack.model
    upload_evaluation_key(s3, layout, model, ensure_keys(model))  # a bundle names its own bucket's key
    try:
        manifest = encrypt_rows(model, x, folder, shard_size=SAMPLES, bundle_id="direct", progress=False)
        submit(s3, layout, folder, progress=False)
    finally:
        upload_evaluation_key(s3, image_stack.served.layout, model, ensure_keys(model))
    status, body = _post(serving.url, layout.shard_request(manifest.bundle_id, 0).to_json())
    assert status == 200, body
    request_uri = layout.request_manifest(manifest.bundle_id)
    request_bytes = s3.get_object(Bucket=request_uri.bucket, Key=request_uri.key)["Body"].read()
    prefix = layout.result_prefix(manifest.bundle_id)
    answer = result_manifest(manifest, sha256_hex(request_bytes), prefix, [parse_shard_result(body)])
    downloaded, shards = download_result(s3, write_result_manifest(s3, layout, answer).uri)
    probabilities = decrypt_result(image_stack.model, downloaded, shards, progress=False)
    classes = image_stack.model.preprocessing.classes
    assert [classes[int(i)] for i in probabilities.argmax(axis=1)] == clear_classes(image_stack.served.package_arn, x)


def test_reference_request_decrypts_to_the_clear_model(
    image_stack: ImageStack, serving: Serving, tmp_path: Path
) -> None:
    from concrete.ml.deployment import FHEModelClient

    s3, bucket = aws.client("s3"), DIRECT_BUCKET
    ensure_bucket(s3, bucket)
    package = aws.client("sagemaker").describe_model_package(ModelPackageName=image_stack.served.package_arn)
    download_prefix(s3, client_artifacts_uri(package), tmp_path / "client")
    client = FHEModelClient(path_dir=str(tmp_path / "client"), key_dir=str(tmp_path / "keys"))
    client.generate_private_and_evaluation_keys()
    x = sample_records(2)
    expected = clear_classes(image_stack.served.package_arn, x)
    scaled = image_stack.model.preprocessing.transform(x)
    s3.put_object(Bucket=bucket, Key="reference/keys.bin", Body=client.get_serialized_evaluation_keys())
    for i, row in enumerate(scaled):
        s3.put_object(
            Bucket=bucket, Key=f"reference/query-{i}.bin", Body=client.quantize_encrypt_serialize(row[None, :])
        )
        body = {
            "evaluation_keys_uri": f"s3://{bucket}/reference/keys.bin",
            "encrypted_query_uri": f"s3://{bucket}/reference/query-{i}.bin",
        }
        status, answer = _post(serving.url, json.dumps(body).encode())
        assert status == 200, answer[:500]
        scores = client.deserialize_decrypt_dequantize(answer)
        assert image_stack.model.preprocessing.classes[int(np.argmax(scores[0]))] == expected[i]


@pytest.mark.parametrize(
    ("body", "code"),
    [(b"not json", "not_json"), (json.dumps({"evaluation_keys_uri": "s3://x"}).encode(), None)],
)
def test_a_bad_request_gets_400_and_the_image_keeps_serving(serving: Serving, body: bytes, code: str | None) -> None:
    status, answer = _post(serving.url, body)
    assert status == 400, answer
    error: dict[str, Any] = json.loads(answer)["error"]
    assert error["message"]
    if code is not None:
        assert error["code"] == code
    with urllib.request.urlopen(serving.url + "/ping", timeout=5) as ping:  # noqa: S310 - loopback
        assert ping.status == 200
