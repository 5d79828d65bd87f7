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

``--deployment PREFIX`` takes the roles, buckets, images, topics, endpoint and model package group of a
deployment made by ``fhe-deploy up --prefix PREFIX``, from its stacks. Each value is, in this order: the flag
given on the command line (it wins over the deployment, and the command says so), the deployment's, the FHE_*
variable, the default.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from typing import Any

from common import aws
from common.deployment import DeploymentNotFound, read_outputs
from common.settings import (
    ENDPOINT_INSTANCE_TYPE,
    ENDPOINT_NAME,
    INVOCATIONS_PER_INSTANCE,
    JOB_INSTANCE_TYPE,
    MODEL_PACKAGE_GROUP,
    PIPELINE_NAME,
    EndpointSettings,
    PipelineSettings,
)
from pipelines import runs
from pipelines.approval import ApprovalError, approve
from pipelines.endpoint import EndpointError, deploy_endpoint

COMMANDS = ("definition", "upsert", "start", "run", "approve", "deploy")


@dataclass(frozen=True)
class Option:
    """A setting the command line, a deployment's outputs, a variable or a default can give."""

    flag: str
    output: str | None  # the deployment's output that gives it
    variable: str
    default: str | None
    help: str

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


OPTIONS = (
    Option("--pipeline-name", "PipelineName", "FHE_PIPELINE_NAME", PIPELINE_NAME, "the pipeline"),
    Option(
        "--pipeline-role-arn",
        "ModelCreatorRoleArn",
        "FHE_PIPELINE_ROLE_ARN",
        "arn:aws:iam::000000000000:role/fhe-pipeline",
        "the role the pipeline's jobs run under",
    ),
    Option("--artifact-bucket", "ModelBucketName", "FHE_ARTIFACT_BUCKET", "fhe-artifacts", "the pipeline's outputs"),
    Option("--data-bucket", "DataBucketName", "FHE_DATA_BUCKET", "fhe-data", "training data sets"),
    Option("--training-image", "TrainingImageUri", "FHE_TRAINING_IMAGE", "fhe-training:latest", "the jobs' image"),
    Option(
        "--inference-image", "InferenceImageUri", "FHE_INFERENCE_IMAGE", "fhe-inference:latest", "the serving image"
    ),
    Option("--job-instance-type", None, "FHE_JOB_INSTANCE_TYPE", JOB_INSTANCE_TYPE, "the training and evaluation jobs"),
    Option("--package-group", "ModelPackageGroup", "FHE_MODEL_PACKAGE_GROUP", MODEL_PACKAGE_GROUP, "model packages"),
    Option("--bundle-bucket", "BundleBucketName", "FHE_BUNDLE_BUCKET", "fhe-batches", "deploy: the endpoint's output"),
    Option(
        "--endpoint-role-arn",
        "EndpointRoleArn",
        "FHE_ENDPOINT_ROLE_ARN",
        "arn:aws:iam::000000000000:role/fhe-endpoint",
        "deploy: the endpoint's execution role",
    ),
    Option("--endpoint-name", "EndpointName", "FHE_ENDPOINT_NAME", ENDPOINT_NAME, "deploy: the endpoint"),
    Option(
        "--endpoint-instance-type", None, "FHE_ENDPOINT_INSTANCE_TYPE", ENDPOINT_INSTANCE_TYPE, "deploy: its instances"
    ),
    Option("--success-topic-arn", "EndpointSuccessTopicArn", "FHE_SUCCESS_TOPIC_ARN", None, "deploy: SNS topic"),
    Option("--error-topic-arn", "EndpointErrorTopicArn", "FHE_ERROR_TOPIC_ARN", None, "deploy: SNS topic"),
)


def resolve(args: argparse.Namespace, deployed: dict[str, str], note: Any = print) -> dict[str, Any]:
    """Each option's value: the flag, else the deployment's output, else the variable, else the default. A flag
    that differs from the deployment's value wins, and ``note`` says so."""
    values: dict[str, Any] = {}
    for option in OPTIONS:
        given = getattr(args, option.dest)
        recorded = deployed.get(option.output) if option.output else None
        if given is not None and recorded is not None and given != recorded:
            note(f"{option.flag} {given} overrides the deployment {args.deployment}'s {recorded}")
        values[option.dest] = (
            given if given is not None else recorded or os.environ.get(option.variable, option.default)
        )
    return values


def pipeline_settings(values: dict[str, Any], region: str) -> PipelineSettings:
    return PipelineSettings(
        role_arn=values["pipeline_role_arn"],
        artifact_bucket=values["artifact_bucket"],
        data_bucket=values["data_bucket"],
        training_image=values["training_image"],
        inference_image=values["inference_image"],
        region=region,
        pipeline_name=values["pipeline_name"],
        package_group=values["package_group"],
        job_instance_type=values["job_instance_type"],
    )


def endpoint_settings(values: dict[str, Any], invocations_per_instance: int) -> EndpointSettings:
    return EndpointSettings(
        package_group=values["package_group"],
        output_bucket=values["bundle_bucket"],
        role_arn=values["endpoint_role_arn"],
        endpoint_name=values["endpoint_name"],
        instance_type=values["endpoint_instance_type"],
        max_concurrent_invocations=invocations_per_instance,
        success_topic_arn=values["success_topic_arn"],
        error_topic_arn=values["error_topic_arn"],
    )


def parse_parameters(items: list[str]) -> list[dict[str, str]]:
    parameters = []
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise SystemExit(f"--param takes Name=Value, got {item!r}")
        parameters.append({"Name": name, "Value": value})
    return parameters


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fhe-pipeline", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=COMMANDS)
    parser.add_argument("--deployment", default=os.environ.get("FHE_DEPLOYMENT"), help="fhe-deploy's --prefix")
    for option in OPTIONS:
        shown = f" (default {option.default})" if option.default else ""
        parser.add_argument(option.flag, help=f"{option.help}; or {option.variable}{shown}")
    parser.add_argument("--region", default=aws.region())
    parser.add_argument("--dataset", help="bundled data set name, local CSV/NPY file, or s3:// URI")
    parser.add_argument(
        "--param", action="append", default=[], metavar="Name=Value", help="pipeline parameter override (repeatable)"
    )
    parser.add_argument("--wait", action="store_true", help="with start: follow the execution to its end")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds to follow an execution")
    parser.add_argument("--package-arn", help="approve: this package (default: the newest pending one)")
    parser.add_argument("--reject", action="store_true", help="approve: reject the package instead")
    parser.add_argument("--note", default="", help="approve: the approval description (who, why)")
    parser.add_argument(
        "--invocations-per-instance", type=int, default=INVOCATIONS_PER_INSTANCE, help="deploy: concurrent shards"
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    note = lambda line: print(f"note: {line}", file=sys.stderr, flush=True)  # noqa: E731
    try:
        deployed = read_outputs(args.deployment) if args.deployment else {}
        values = resolve(args, deployed, note)
        run(args, pipeline_settings(values, args.region), endpoint_settings(values, args.invocations_per_instance))
    except (DeploymentNotFound, ApprovalError, EndpointError, runs.PipelineRunError) as error:
        raise SystemExit(f"fhe-pipeline {args.command}: {error}") from None


def run(args: argparse.Namespace, settings: PipelineSettings, endpoint: EndpointSettings) -> None:
    if args.command == "definition":
        print(runs.definition_json(settings))
        return
    if args.command == "approve":
        decision = "Rejected" if args.reject else "Approved"
        print(json.dumps(approve(args.package_arn, settings.package_group, decision, args.note), indent=2))
        return
    if args.command == "deploy":
        print(f"deploying the newest Approved package of {endpoint.package_group} to {endpoint.endpoint_name}…")
        print(json.dumps(deploy_endpoint(endpoint, wait_seconds=args.timeout), indent=2))
        return
    if args.command in ("upsert", "run"):
        runs.upsert(settings)
    if args.command == "upsert":
        return
    parameters = parse_parameters(args.param)
    if args.dataset:
        parameters = [p for p in parameters if p["Name"] != "InputDataUri"]
        parameters.append({"Name": "InputDataUri", "Value": runs.stage_dataset(settings, args.dataset)})
    elif args.command == "run" and not any(p["Name"] == "InputDataUri" for p in parameters):
        runs.stage_dataset(settings, "breast_cancer")  # the definition's default InputDataUri
    execution_arn = runs.start(settings, parameters)
    print(f"started {execution_arn}", flush=True)
    if args.command == "start" and not args.wait:
        return
    runs.follow(execution_arn, args.timeout)
    result = runs.outcome(execution_arn)
    print(json.dumps(result, indent=2, default=str))
    raise SystemExit(0 if result["status"] == "Succeeded" else 1)


if __name__ == "__main__":
    main()
