"""The training pipeline's life, as library calls: its definition, create or update it (with its model package
group), stage a data set, start an execution, follow it to its end and read its outcome. ``fhe-pipeline``, the
deployment, the demo and the tests all go through here."""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import aws
from common.s3uri import S3Uri, ensure_bucket
from common.settings import PipelineSettings
from pipelines.executions import describe_run
from pipelines.pipeline import build_pipeline

TERMINAL = ("Succeeded", "Failed", "Stopped")
POLL_SECONDS = 2.0


class PipelineRunError(RuntimeError):
    """A data set that cannot be staged, or an execution that did not end in time."""


def definition_json(settings: PipelineSettings) -> str:
    os.environ.setdefault("SAGEMAKER_TELEMETRY_OPT_OUT", "true")
    os.environ.setdefault("AWS_DEFAULT_REGION", settings.region)
    import sagemaker.mlops.workflow.pipeline  # noqa: F401 - imported first: it sets the levels put right below

    for name in ("sagemaker", "sagemaker.core", "sagemaker.mlops", "sagemaker.serve", "sagemaker.train", "botocore"):
        logging.getLogger(name).setLevel(logging.ERROR)
    logging.getLogger().setLevel(logging.WARNING)
    for handler in logging.getLogger().handlers:
        handler.setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Running within a PipelineSession…" is expected here
        definition = str(build_pipeline(settings).definition())
    # Importing the SDK turns the root logger to INFO; put it back so the CLI prints only its own progress.
    logging.getLogger().setLevel(logging.WARNING)
    for handler in logging.getLogger().handlers:
        handler.setLevel(logging.WARNING)
    return definition


def upsert(settings: PipelineSettings, report: Callable[[str], None] = print) -> str:
    """Create or update the pipeline, and its model package group if it has none yet; returns its ARN."""
    sagemaker = aws.client("sagemaker")
    definition = definition_json(settings)
    try:
        arn = sagemaker.create_pipeline(
            PipelineName=settings.pipeline_name, PipelineDefinition=definition, RoleArn=settings.role_arn
        )["PipelineArn"]
        report(f"created pipeline {settings.pipeline_name}")
    except sagemaker.exceptions.ClientError as error:
        code = error.response["Error"]["Code"]
        message = error.response["Error"].get("Message", "")
        if code not in ("ValidationException", "ResourceInUse") or "already exists" not in message:
            raise
        arn = sagemaker.update_pipeline(
            PipelineName=settings.pipeline_name, PipelineDefinition=definition, RoleArn=settings.role_arn
        )["PipelineArn"]
        report(f"updated pipeline {settings.pipeline_name}")
    try:
        sagemaker.describe_model_package_group(ModelPackageGroupName=settings.package_group)
    except sagemaker.exceptions.ClientError:
        sagemaker.create_model_package_group(
            ModelPackageGroupName=settings.package_group,
            ModelPackageGroupDescription="Concrete ML models trained by the FHE training pipeline",
        )
        report(f"created model package group {settings.package_group}")
    return str(arn)


def stage_dataset(settings: PipelineSettings, dataset: str) -> str:
    """Upload a bundled data set or a local file; returns its S3 URI for ``InputDataUri``."""
    if dataset.startswith("s3://"):
        return dataset
    s3 = aws.client("s3")
    ensure_bucket(s3, settings.data_bucket)
    path = Path(dataset)
    with tempfile.TemporaryDirectory() as scratch:
        if not path.exists():
            from containers.training.data import BUILTIN_DATASETS, builtin_dataset_csv

            if dataset not in BUILTIN_DATASETS:
                raise PipelineRunError(
                    f"the data set {dataset!r} is neither a file nor a bundled data set ({', '.join(BUILTIN_DATASETS)})"
                )
            path = builtin_dataset_csv(dataset, Path(scratch) / f"{dataset}.csv")
        name = path.stem.replace(" ", "_")
        target = S3Uri(settings.data_bucket, f"datasets/{name}/{path.name}")
        s3.upload_file(str(path), target.bucket, target.key)
    return str(target)


def start(settings: PipelineSettings, parameters: list[dict[str, str]], display_name: str | None = None) -> str:
    request: dict[str, Any] = {"PipelineName": settings.pipeline_name, "PipelineParameters": parameters}
    if display_name:
        request["PipelineExecutionDisplayName"] = display_name
    return str(aws.client("sagemaker").start_pipeline_execution(**request)["PipelineExecutionArn"])


def follow(execution_arn: str, timeout: float, out: Any = sys.stdout) -> dict[str, Any]:
    """Print each step's transitions until the execution ends; returns the final description."""
    sagemaker = aws.client("sagemaker")
    started = time.monotonic()
    seen: dict[str, str] = {}
    while True:
        steps = sagemaker.list_pipeline_execution_steps(PipelineExecutionArn=execution_arn, SortOrder="Ascending")[
            "PipelineExecutionSteps"
        ]
        for step in steps:
            if seen.get(step["StepName"]) != step["StepStatus"]:
                seen[step["StepName"]] = step["StepStatus"]
                reason = f" — {step['FailureReason']}" if step.get("FailureReason") else ""
                print(
                    f"[{time.monotonic() - started:6.0f}s] {step['StepName']:14} {step['StepStatus']}{reason}",
                    file=out,
                    flush=True,
                )
        execution = sagemaker.describe_pipeline_execution(PipelineExecutionArn=execution_arn)
        if execution["PipelineExecutionStatus"] in TERMINAL:
            return dict(execution)
        if time.monotonic() - started > timeout:
            raise PipelineRunError(
                f"execution {execution_arn} still {execution['PipelineExecutionStatus']} after {timeout:.0f}s"
            )
        time.sleep(POLL_SECONDS)


def outcome(execution_arn: str) -> dict[str, Any]:
    """The execution's result as data: status, steps, and the model package it registered with its metrics."""
    return describe_run(aws.client("sagemaker"), aws.client("s3"), execution_arn)


def train_and_register(
    settings: PipelineSettings,
    *,
    dataset: str = "breast_cancer",
    parameters: dict[str, str] | None = None,
    timeout: float = 1800.0,
    out: Any = sys.stdout,
) -> str:
    """Run the pipeline on ``dataset`` (staged first) to its end; returns the ARN of the model package it
    registered. ``parameters`` are pipeline parameters (``ModelType``, ``FheSampleSize``…)."""
    given = {"InputDataUri": stage_dataset(settings, dataset), **(parameters or {})}
    execution = start(settings, [{"Name": k, "Value": v} for k, v in given.items()])
    follow(execution, timeout, out)
    result = outcome(execution)
    if result["status"] != "Succeeded" or "model_package" not in result:
        raise PipelineRunError(f"the training pipeline ended {result['status']}: {result.get('failure_reason')}")
    return str(result["model_package"]["arn"])
