"""Processing and training jobs, run under the SageMaker container path contract.

Each job gets its own root folder standing in for the container's ``/``: inputs are copied from S3 into
``<root>/opt/ml/...`` as SageMaker would, the container runs (``container_runtime.py``: the command standing in for the
image, or the image itself with ``/opt/ml`` mounted), and outputs go back to S3 afterwards.
"""

from __future__ import annotations

import json
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aws_emulators.sagemaker.aws_clients import AwsClients
from aws_emulators.sagemaker.container_runtime import Container, ContainerError, Runtime, aws_environment
from aws_emulators.sagemaker.s3_objects import S3Uri, download_prefix, upload_directory

if TYPE_CHECKING:
    from aws_emulators.sagemaker.backend import Backend

FAILURE_TAIL_LINES = 5
# What a Create*Job request holds that the job's description does not.
_REQUEST_ONLY = ("Tags", "SessionChainingConfig")
_DEFAULT_STOPPING_CONDITION = {"MaxRuntimeInSeconds": 86400}


def describe(kind: str, name: str, arn: str, request: dict[str, Any], status: str, **details: Any) -> dict[str, Any]:
    """A job as DescribeProcessingJob or DescribeTrainingJob answers for it (and as a pipeline step's properties
    read it): the request, its name and ARN, its status; ``details`` add times, artifacts, the failure reason."""
    described = {k: v for k, v in request.items() if k not in _REQUEST_ONLY}
    if kind == "Processing":
        described.update(ProcessingJobName=name, ProcessingJobArn=arn, ProcessingJobStatus=status)
    else:
        secondary = {"InProgress": "Training"}.get(status, status)
        described.update(TrainingJobName=name, TrainingJobArn=arn, TrainingJobStatus=status, SecondaryStatus=secondary)
        described.setdefault("StoppingCondition", _DEFAULT_STOPPING_CONDITION)
        described["ModelArtifacts"] = {"S3ModelArtifacts": str(model_location(request, name))}
    return {**described, **details}


def model_location(request: dict[str, Any], name: str) -> S3Uri:
    """Where a training job's ``model.tar.gz`` goes."""
    return S3Uri.parse(request["OutputDataConfig"]["S3OutputPath"]).join(name, "output", "model.tar.gz")


class JobFailed(Exception):
    """The job's container exited non-zero; the message is its failure reason."""


@dataclass(frozen=True)
class JobResult:
    properties: dict[str, Any]
    local_outputs: dict[str, Path]


def _inside(root: Path, container_path: str) -> Path:
    target = (root / container_path.lstrip("/")).resolve()
    if not target.is_relative_to(root.resolve()):
        raise JobFailed(f"container path {container_path!r} escapes the container")
    return target


def _run(runtime: Runtime, container: Container, failure_file: str) -> None:
    log_path = container.root / "job.log"
    try:
        command, environment = runtime.command(container)
    except ContainerError as error:
        raise JobFailed(str(error)) from None
    with log_path.open("wb") as log:
        completed = subprocess.run(
            command, cwd=container.root, env=environment, stdout=log, stderr=subprocess.STDOUT, check=False
        )
    if completed.returncode != 0:
        reason_file = container.root / "opt/ml/output" / failure_file
        if reason_file.exists() and reason_file.read_text().strip():
            reason = reason_file.read_text().strip()
        else:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-FAILURE_TAIL_LINES:]
            reason = f"exit code {completed.returncode}: " + " | ".join(tail)
        raise JobFailed(reason[:1024])


def _environment(request: dict[str, Any], aws: AwsClients) -> dict[str, str]:
    """The job's own environment and its role's AWS session, as SageMaker passes them."""
    try:
        session = aws_environment(request.get("RoleArn"), aws)
    except ContainerError as error:
        raise JobFailed(str(error)) from None
    return {**session, **{k: str(v) for k, v in request.get("Environment", {}).items()}}


def run_processing_job(backend: Backend, name: str, request: dict[str, Any], root: Path, arn: str) -> JobResult:
    s3 = backend.s3()
    app = request["AppSpecification"]
    for item in request.get("ProcessingInputs", []):
        s3_input = item.get("S3Input")
        if not s3_input:
            raise JobFailed(f"processing input {item.get('InputName')!r}: only S3 inputs are supported locally")
        download_prefix(s3, S3Uri.parse(s3_input["S3Uri"]), _inside(root, s3_input["LocalPath"]))
    outputs = request.get("ProcessingOutputConfig", {}).get("Outputs", [])
    local_outputs = {}
    for item in outputs:
        folder = _inside(root, item["S3Output"]["LocalPath"])
        folder.mkdir(parents=True, exist_ok=True)
        local_outputs[item["OutputName"]] = folder
    container = Container(
        name=name,
        image_uri=app["ImageUri"],
        arguments=[str(a) for a in app.get("ContainerArguments", [])],
        root=root,
        environment=_environment(request, backend.aws),
        entrypoint=app.get("ContainerEntrypoint"),
    )
    _run(backend.runtime, container, "message")
    for item in outputs:
        upload_directory(s3, local_outputs[item["OutputName"]], S3Uri.parse(item["S3Output"]["S3Uri"]))
    return JobResult(describe("Processing", name, arn, request, "Completed"), local_outputs)


def run_training_job(backend: Backend, name: str, request: dict[str, Any], root: Path, arn: str) -> JobResult:
    s3 = backend.s3()
    spec = request["AlgorithmSpecification"]
    config = root / "opt/ml/input/config"
    config.mkdir(parents=True, exist_ok=True)
    hyperparameters = {k: str(v) for k, v in request.get("HyperParameters", {}).items()}
    (config / "hyperparameters.json").write_text(json.dumps(hyperparameters))
    channels = {}
    for channel in request.get("InputDataConfig", []):
        source = channel["DataSource"].get("S3DataSource")
        if not source:
            raise JobFailed(f"channel {channel['ChannelName']!r}: only S3 data sources are supported locally")
        download_prefix(s3, S3Uri.parse(source["S3Uri"]), root / "opt/ml/input/data" / channel["ChannelName"])
        channels[channel["ChannelName"]] = {"TrainingInputMode": "File", "S3DistributionType": "FullyReplicated"}
    (config / "inputdataconfig.json").write_text(json.dumps(channels))
    (config / "resourceconfig.json").write_text(json.dumps({"current_host": "algo-1", "hosts": ["algo-1"]}))
    model_folder = root / "opt/ml/model"
    model_folder.mkdir(parents=True, exist_ok=True)
    container = Container(
        name=name,
        image_uri=spec["TrainingImage"],
        # SageMaker starts a training image as "<image> train" unless the job names its own entry point.
        arguments=[str(a) for a in spec.get("ContainerArguments", ["train"])],
        root=root,
        environment=_environment(request, backend.aws),
        entrypoint=spec.get("ContainerEntrypoint"),
    )
    _run(backend.runtime, container, "failure")

    archive = root / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(model_folder.rglob("*")):
            tar.add(path, arcname=path.relative_to(model_folder).as_posix(), recursive=False)
    destination = model_location(request, name)
    s3.upload_file(str(archive), destination.bucket, destination.key)
    return JobResult(describe("Training", name, arn, request, "Completed"), {})
