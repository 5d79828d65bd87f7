"""Processing and training jobs, run as subprocesses under the SageMaker container path contract.

Each job gets its own root folder standing in for the container's ``/``: inputs are copied from S3 into
``<root>/opt/ml/...`` as SageMaker would, the image's entry point runs with ``SAGEMAKER_CONTAINER_ROOT``
pointing there, and outputs go back to S3 afterwards.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.s3uri import S3Uri, download_prefix, upload_directory

# What each image runs, by repository name: a deployment's repositories are "<prefix>-training" and
# "<prefix>-inference" (infrastructure/bootstrap.yaml), so the suffix says which container it is. Locally "python"
# is the interpreter of the project's venv, where the containers' code is installed just as it is in the images.
DEFAULT_IMAGES: dict[str, list[str]] = {
    "training": ["python", "-m", "containers.training"],
    "inference": ["python", "-m", "containers.inference"],
}
FAILURE_TAIL_LINES = 5


class JobFailed(Exception):
    """The job's container exited non-zero; the message is its failure reason."""


@dataclass(frozen=True)
class JobResult:
    properties: dict[str, Any]
    local_outputs: dict[str, Path]


def image_name(image_uri: str) -> str:
    return image_uri.rsplit("/", 1)[-1].split("@", 1)[0].split(":", 1)[0]


def image_entrypoint(image_uri: str) -> list[str]:
    images = dict(DEFAULT_IMAGES)
    if os.environ.get("LOCAL_SAGEMAKER_IMAGES"):
        images.update(json.loads(os.environ["LOCAL_SAGEMAKER_IMAGES"]))
    name = image_name(image_uri)
    name = next((known for known in images if name == known or name.endswith(f"-{known}")), name)
    if name not in images:
        raise JobFailed(f"image {image_uri} is not available to the local SageMaker (known: {', '.join(images)})")
    return list(images[name])


def _local_command(command: list[str]) -> list[str]:
    return [sys.executable if part in ("python", "python3") else part for part in command]


def _inside(root: Path, container_path: str) -> Path:
    target = (root / container_path.lstrip("/")).resolve()
    if not target.is_relative_to(root.resolve()):
        raise JobFailed(f"container path {container_path!r} escapes the container")
    return target


def _run(command: list[str], root: Path, environment: dict[str, str], failure_file: str) -> None:
    log_path = root / "job.log"
    env = {**os.environ, **environment, "SAGEMAKER_CONTAINER_ROOT": str(root)}
    with log_path.open("wb") as log:
        completed = subprocess.run(
            _local_command(command), cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, check=False
        )
    if completed.returncode != 0:
        reason_file = root / "opt/ml/output" / failure_file
        if reason_file.exists() and reason_file.read_text().strip():
            reason = reason_file.read_text().strip()
        else:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-FAILURE_TAIL_LINES:]
            reason = f"exit code {completed.returncode}: " + " | ".join(tail)
        raise JobFailed(reason[:1024])


def run_processing_job(s3: Any, name: str, request: dict[str, Any], root: Path, arn: str) -> JobResult:
    app = request["AppSpecification"]
    command = list(app.get("ContainerEntrypoint") or image_entrypoint(app["ImageUri"]))
    command += [str(a) for a in app.get("ContainerArguments", [])]
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
    environment = {k: str(v) for k, v in request.get("Environment", {}).items()}
    _run(command, root, environment, "message")
    for item in outputs:
        upload_directory(s3, local_outputs[item["OutputName"]], S3Uri.parse(item["S3Output"]["S3Uri"]))
    properties = {
        **request,
        "ProcessingJobName": name,
        "ProcessingJobArn": arn,
        "ProcessingJobStatus": "Completed",
    }
    return JobResult(properties, local_outputs)


def run_training_job(s3: Any, name: str, request: dict[str, Any], root: Path, arn: str) -> JobResult:
    spec = request["AlgorithmSpecification"]
    command = list(spec.get("ContainerEntrypoint") or image_entrypoint(spec["TrainingImage"]))
    command += [str(a) for a in spec.get("ContainerArguments", ["train"])]
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
    environment = {k: str(v) for k, v in request.get("Environment", {}).items()}
    _run(command, root, environment, "failure")

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
