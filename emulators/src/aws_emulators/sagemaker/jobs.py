"""Processing and training jobs, run under the SageMaker container path contract.

Each job gets its own root folder standing in for the container's ``/``: inputs are copied from S3 into
``<root>/opt/ml/...`` as SageMaker would, the container runs (``runtime.py``: the source tree's entry point, or
the built image with ``/opt/ml`` mounted), and outputs go back to S3 afterwards.
"""

from __future__ import annotations

import json
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aws_emulators.sagemaker.runtime import Container, ContainerError, Runtime, aws_environment
from common.s3uri import S3Uri, download_prefix, upload_directory

FAILURE_TAIL_LINES = 5


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


def _environment(request: dict[str, Any]) -> dict[str, str]:
    """The job's own environment and its role's AWS session, as SageMaker passes them."""
    try:
        session = aws_environment(request.get("RoleArn"))
    except ContainerError as error:
        raise JobFailed(str(error)) from None
    return {**session, **{k: str(v) for k, v in request.get("Environment", {}).items()}}


def run_processing_job(
    s3: Any, name: str, request: dict[str, Any], root: Path, arn: str, runtime: Runtime
) -> JobResult:
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
        environment=_environment(request),
        entrypoint=app.get("ContainerEntrypoint"),
    )
    _run(runtime, container, "message")
    for item in outputs:
        upload_directory(s3, local_outputs[item["OutputName"]], S3Uri.parse(item["S3Output"]["S3Uri"]))
    properties = {
        **request,
        "ProcessingJobName": name,
        "ProcessingJobArn": arn,
        "ProcessingJobStatus": "Completed",
    }
    return JobResult(properties, local_outputs)


def run_training_job(s3: Any, name: str, request: dict[str, Any], root: Path, arn: str, runtime: Runtime) -> JobResult:
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
        environment=_environment(request),
        entrypoint=spec.get("ContainerEntrypoint"),
    )
    _run(runtime, container, "failure")

    archive = root / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(model_folder.rglob("*")):
            tar.add(path, arcname=path.relative_to(model_folder).as_posix(), recursive=False)
    destination = S3Uri.parse(request["OutputDataConfig"]["S3OutputPath"]).join(name, "output", "model.tar.gz")
    s3.upload_file(str(archive), destination.bucket, destination.key)
    properties = {
        **request,
        "TrainingJobName": name,
        "TrainingJobArn": arn,
        "TrainingJobStatus": "Completed",
        "ModelArtifacts": {"S3ModelArtifacts": str(destination)},
    }
    return JobResult(properties, {})
