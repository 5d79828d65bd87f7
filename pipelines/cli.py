"""Command line for the training pipeline.

    fhe-pipeline definition                 print the definition JSON (offline, no credentials needed)
    fhe-pipeline upsert                     create or update the pipeline (and its model package group)
    fhe-pipeline start [--dataset D] [--param Name=Value …] [--wait]
    fhe-pipeline run   [--dataset D] [--param Name=Value …]    upsert, start, follow, print the outcome
    fhe-pipeline approve [--package-arn ARN] [--reject] [--note TEXT]   approve (or reject) a model package
    fhe-pipeline deploy [--endpoint-name N]  deploy the newest Approved package to an async endpoint

Where it runs is decided only by the AWS configuration (``AWS_ENDPOINT_URL*`` for the local stack).
``--dataset`` takes a bundled data set (``breast_cancer``, ``digits``) or a local CSV / NPY file; it is
uploaded under ``s3://<data bucket>/datasets/`` and passed as ``InputDataUri``.

``--deployment PREFIX`` takes the role, buckets, images, topics and endpoint of a deployment made by
``fhe-deploy up --prefix PREFIX`` from its stacks; without it they come from the options (or FHE_* variables).
"""

from __future__ import annotations

import argparse
import json
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
from pipelines.deploy import DeploySettings, approve, deploy
from pipelines.executions import describe_run
from pipelines.pipeline import MODEL_PACKAGE_GROUP, PIPELINE_NAME, PipelineSettings, build_pipeline

TERMINAL = ("Succeeded", "Failed", "Stopped")
POLL_SECONDS = 2.0


def _deployment(args: argparse.Namespace) -> dict[str, str]:
    """The outputs of the deployment named by --deployment (buckets, roles, topics, images); none without it."""
    if not args.deployment:
        return {}
    from infrastructure.deploy import Deployment, outputs

    return outputs(Deployment(prefix=args.deployment, pipeline_name=args.pipeline_name))


def settings_from(args: argparse.Namespace) -> PipelineSettings:
    deployed = _deployment(args)
    return PipelineSettings(
        role_arn=deployed.get("ModelCreatorRoleArn", args.role_arn),
        artifact_bucket=deployed.get("ModelBucketName", args.artifact_bucket),
        data_bucket=deployed.get("DataBucketName", args.data_bucket),
        training_image=deployed.get("TrainingImageUri", args.training_image),
        inference_image=deployed.get("InferenceImageUri", args.inference_image),
        region=args.region,
        pipeline_name=args.pipeline_name,
    )


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


def upsert(
    settings: PipelineSettings, package_group: str = MODEL_PACKAGE_GROUP, report: Callable[[str], None] = print
) -> str:
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
        sagemaker.describe_model_package_group(ModelPackageGroupName=package_group)
    except sagemaker.exceptions.ClientError:
        sagemaker.create_model_package_group(
            ModelPackageGroupName=package_group,
            ModelPackageGroupDescription="Concrete ML models trained by the FHE training pipeline",
        )
        report(f"created model package group {package_group}")
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
                raise SystemExit(
                    f"--dataset {dataset!r} is neither a file nor a bundled data set ({', '.join(BUILTIN_DATASETS)})"
                )
            path = builtin_dataset_csv(dataset, Path(scratch) / f"{dataset}.csv")
        name = path.stem.replace(" ", "_")
        target = S3Uri(settings.data_bucket, f"datasets/{name}/{path.name}")
        s3.upload_file(str(path), target.bucket, target.key)
    return str(target)


def parse_parameters(items: list[str]) -> list[dict[str, str]]:
    parameters = []
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise SystemExit(f"--param takes Name=Value, got {item!r}")
        parameters.append({"Name": name, "Value": value})
    return parameters


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
            raise SystemExit(
                f"execution {execution_arn} still {execution['PipelineExecutionStatus']} after {timeout:.0f}s"
            )
        time.sleep(POLL_SECONDS)


def outcome(execution_arn: str) -> dict[str, Any]:
    """The execution's result as data: status, steps, and the model package it registered with its metrics."""
    return describe_run(aws.client("sagemaker"), aws.client("s3"), execution_arn)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="fhe-pipeline", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=("definition", "upsert", "start", "run", "approve", "deploy"))
    parser.add_argument("--pipeline-name", default=os.environ.get("FHE_PIPELINE_NAME", PIPELINE_NAME))
    parser.add_argument(
        "--role-arn", default=os.environ.get("FHE_PIPELINE_ROLE_ARN", "arn:aws:iam::000000000000:role/fhe-pipeline")
    )
    parser.add_argument("--deployment", default=os.environ.get("FHE_DEPLOYMENT"), help="fhe-deploy's --prefix")
    parser.add_argument("--artifact-bucket", default=os.environ.get("FHE_ARTIFACT_BUCKET", "fhe-artifacts"))
    parser.add_argument("--data-bucket", default=os.environ.get("FHE_DATA_BUCKET", "fhe-data"))
    parser.add_argument("--output-bucket", default=os.environ.get("FHE_OUTPUT_BUCKET", "fhe-batches"))
    parser.add_argument("--training-image", default=os.environ.get("FHE_TRAINING_IMAGE", "fhe-training:latest"))
    parser.add_argument("--inference-image", default=os.environ.get("FHE_INFERENCE_IMAGE", "fhe-inference:latest"))
    parser.add_argument("--region", default=aws.region())
    parser.add_argument("--dataset", help="bundled data set name, local CSV/NPY file, or s3:// URI")
    parser.add_argument(
        "--param", action="append", default=[], metavar="Name=Value", help="pipeline parameter override (repeatable)"
    )
    parser.add_argument("--wait", action="store_true", help="with start: follow the execution to its end")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds to follow an execution")
    parser.add_argument("--package-group", default=os.environ.get("FHE_MODEL_PACKAGE_GROUP", MODEL_PACKAGE_GROUP))
    parser.add_argument("--package-arn", help="approve: this package (default: the newest pending one)")
    parser.add_argument("--reject", action="store_true", help="approve: reject the package instead")
    parser.add_argument("--note", default="", help="approve: the approval description (who, why)")
    parser.add_argument("--endpoint-name", default=os.environ.get("FHE_ENDPOINT_NAME", "fhe-inference"))
    parser.add_argument("--instance-type", default=os.environ.get("FHE_INSTANCE_TYPE", "ml.c6i.4xlarge"))
    parser.add_argument("--max-concurrent-invocations", type=int, default=2, help="deploy: per instance")
    parser.add_argument("--success-topic-arn", default=os.environ.get("FHE_SUCCESS_TOPIC_ARN"))
    parser.add_argument("--error-topic-arn", default=os.environ.get("FHE_ERROR_TOPIC_ARN"))
    args = parser.parse_args(argv)
    settings = settings_from(args)

    if args.command == "approve":
        decision = "Rejected" if args.reject else "Approved"
        print(json.dumps(approve(args.package_arn, args.package_group, decision, args.note), indent=2))
        return
    if args.command == "deploy":
        deployed = _deployment(args)
        deployment = DeploySettings(
            package_group=deployed.get("ModelPackageGroup", args.package_group),
            output_bucket=deployed.get("BundleBucketName", args.output_bucket),
            role_arn=deployed.get("EndpointRoleArn", args.role_arn),
            endpoint_name=deployed.get("EndpointName", args.endpoint_name),
            instance_type=args.instance_type,
            max_concurrent_invocations=args.max_concurrent_invocations,
            success_topic_arn=deployed.get("EndpointSuccessTopicArn", args.success_topic_arn),
            error_topic_arn=deployed.get("EndpointErrorTopicArn", args.error_topic_arn),
        )
        print(
            f"deploying the newest Approved package of {deployment.package_group} to {deployment.endpoint_name}…",
            flush=True,
        )
        print(json.dumps(deploy(deployment, wait_seconds=args.timeout), indent=2))
        return

    if args.command == "definition":
        print(definition_json(settings))
        return
    if args.command in ("upsert", "run"):
        upsert(settings)
    if args.command == "upsert":
        return
    parameters = parse_parameters(args.param)
    if args.dataset:
        parameters = [p for p in parameters if p["Name"] != "InputDataUri"]
        parameters.append({"Name": "InputDataUri", "Value": stage_dataset(settings, args.dataset)})
    elif args.command == "run" and not any(p["Name"] == "InputDataUri" for p in parameters):
        stage_dataset(settings, "breast_cancer")  # the definition's default InputDataUri
    execution_arn = start(settings, parameters)
    print(f"started {execution_arn}", flush=True)
    if args.command == "start" and not args.wait:
        return
    follow(execution_arn, args.timeout)
    result = outcome(execution_arn)
    print(json.dumps(result, indent=2, default=str))
    raise SystemExit(0 if result["status"] == "Succeeded" else 1)


if __name__ == "__main__":
    main()
