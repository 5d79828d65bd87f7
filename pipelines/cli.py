"""Command line for the training pipeline.

    fhe-pipeline definition                 print the definition JSON (offline: no credentials needed, only the
                                            pipeline's role, from --deployment or --pipeline-role-arn)
    fhe-pipeline upsert                     create or update the pipeline (and its model package group)
    fhe-pipeline start [--dataset D] [--param Name=Value …] [--wait]
    fhe-pipeline run   [--dataset D] [--param Name=Value …]    upsert, start, follow, print the outcome
    fhe-pipeline approve [--package-arn ARN] [--reject] [--note TEXT]   approve (or reject) a model package,
                                            publishing its client artifacts to batch owners (or withdrawing them)
    fhe-pipeline deploy [--package-arn ARN]  deploy the newest (or the given) Approved package on its version's own
                                            async endpoint, <endpoint name>-v<version>; other versions stay served,
                                            unless a retention rule (below) retires them
    fhe-pipeline retire [--keep K] [--older-than-days D]  retire all but the newest K served versions, and those
                                            deployed more than D days ago (never the newest); a version with running
                                            bundles is kept and named. Without the flags, the deployment's rule
                                            (fhe-deploy up --keep-versions / --retire-after-days), which deploy
                                            also applies after each deploy
    fhe-pipeline retire --version N [--drain SECONDS]  delete version N's stack (its endpoint and scaling) once
                                            no running bundle uses it (refuses, naming them, unless --drain); needs
                                            --deployment
    fhe-pipeline predict --package-arn ARN --dataset records.csv   a registered version's clear (quantized)
                                            predictions, one class per record: what encrypted inference reproduces
    fhe-pipeline register-pretrained --model-source FOLDER|s3://bucket/prefix/   register a pretrained causal
                                            language model (safetensors, config.json, tokenizer.json; no pickle)
                                            for the enclave path, PendingManualApproval, as a trained model is

Each served version is a CloudFormation stack, <endpoint name>-v<version>, made under the deployment's service
role (--stack-role-arn): deploy creates or updates it, retire deletes it.

Where it runs is decided only by the AWS configuration (``AWS_ENDPOINT_URL*`` for the local stack).
``--dataset`` takes a bundled data set (``breast_cancer``, ``digits``) or a local CSV / NPY file; it is
uploaded under ``s3://<data bucket>/datasets/`` and passed as ``InputDataUri``.

``--deployment PREFIX`` takes the roles, buckets, images, topics, endpoint and model package group of a
deployment made by ``fhe-deploy up --prefix PREFIX``, from its stacks. Each value is, in this order: the flag
given on the command line (it wins over the deployment, and the command says so), the deployment's, the FHE_*
variable, the default. The roles have no default: without a deployment, give them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from common import aws
from common.preprocessing import SchemaError
from common.settings import (
    BACKLOG_PER_INSTANCE,
    ENDPOINT_INSTANCE_TYPE,
    ENDPOINT_NAME,
    INVOCATIONS_PER_INSTANCE,
    JOB_INSTANCE_TYPE,
    MAX_INSTANCES,
    MIN_INSTANCES,
    MODEL_PACKAGE_GROUP,
    PIPELINE_NAME,
    SCALE_IN_COOLDOWN_S,
    SCALE_OUT_COOLDOWN_S,
    DeployedSettings,
    EndpointSettings,
    PipelineSettings,
    from_outputs,
)
from common.stack_outputs import DeploymentNotFound, read_outputs
from pipelines import runs
from pipelines.approval import ApprovalError, PublicationError, approve
from pipelines.clear_predictions import PredictionError, clear_classes
from pipelines.endpoint import EndpointError, deploy_endpoint
from pipelines.pretrained import PretrainedError, register_pretrained
from pipelines.retirement import RetirementError, retire, retire_by_rule, revoke

COMMANDS = ("definition", "upsert", "start", "run", "approve", "deploy", "retire", "predict", "register-pretrained")


@dataclass(frozen=True)
class Option:
    """A setting that the command line, a deployment, a variable or a default can give; ``sets`` names the
    settings fields it fills (``pipeline.<field>``, ``endpoint.<field>``)."""

    flag: str
    sets: tuple[str, ...]
    variable: str
    default: str | int | float | None
    help: str

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")

    def fallback(self) -> Any:
        """The value without the flag and without a deployment: the variable, else the default."""
        value = os.environ.get(self.variable)
        return self.default if value is None else type(self.default)(value) if self.default is not None else value


OPTIONS = (
    Option("--pipeline-name", ("pipeline.pipeline_name",), "FHE_PIPELINE_NAME", PIPELINE_NAME, "the pipeline"),
    Option(
        "--pipeline-role-arn",
        ("pipeline.role_arn",),
        "FHE_PIPELINE_ROLE_ARN",
        None,
        "the role the pipeline's jobs run under",
    ),
    Option(
        "--artifact-bucket", ("pipeline.artifact_bucket",), "FHE_ARTIFACT_BUCKET", "fhe-artifacts", "pipeline outputs"
    ),
    Option("--data-bucket", ("pipeline.data_bucket",), "FHE_DATA_BUCKET", "fhe-data", "training data sets"),
    Option(
        "--training-image", ("pipeline.training_image",), "FHE_TRAINING_IMAGE", "fhe-training:latest", "jobs' image"
    ),
    Option(
        "--inference-image",
        ("pipeline.inference_image",),
        "FHE_INFERENCE_IMAGE",
        "fhe-inference:latest",
        "the serving image",
    ),
    Option(
        "--job-instance-type",
        ("pipeline.job_instance_type",),
        "FHE_JOB_INSTANCE_TYPE",
        JOB_INSTANCE_TYPE,
        "the training and evaluation jobs",
    ),
    Option(
        "--package-group",
        ("pipeline.package_group", "endpoint.package_group"),
        "FHE_MODEL_PACKAGE_GROUP",
        MODEL_PACKAGE_GROUP,
        "where packages are registered, approved and deployed from",
    ),
    Option("--bundle-bucket", ("endpoint.output_bucket",), "FHE_BUNDLE_BUCKET", "fhe-bundles", "deploy: its responses"),
    Option(
        "--endpoint-role-arn",
        ("endpoint.role_arn",),
        "FHE_ENDPOINT_ROLE_ARN",
        None,
        "deploy: the endpoint's execution role",
    ),
    Option(
        "--stack-role-arn",
        ("endpoint.stack_role_arn",),
        "FHE_STACK_ROLE_ARN",
        None,
        "deploy: the CloudFormation service role the version's stack is made with (default: your own permissions)",
    ),
    Option("--endpoint-name", ("endpoint.endpoint_name",), "FHE_ENDPOINT_NAME", ENDPOINT_NAME, "deploy: the endpoint"),
    Option(
        "--endpoint-instance-type",
        ("endpoint.instance_type",),
        "FHE_ENDPOINT_INSTANCE_TYPE",
        ENDPOINT_INSTANCE_TYPE,
        "deploy: its instances",
    ),
    Option(
        "--invocations-per-instance",
        ("endpoint.max_concurrent_invocations",),
        "FHE_INVOCATIONS_PER_INSTANCE",
        INVOCATIONS_PER_INSTANCE,
        "deploy: concurrent shards per instance",
    ),
    Option("--min-instances", ("endpoint.min_instances",), "FHE_MIN_INSTANCES", MIN_INSTANCES, "deploy: scaled in to"),
    Option("--max-instances", ("endpoint.max_instances",), "FHE_MAX_INSTANCES", MAX_INSTANCES, "deploy: scaled out to"),
    Option(
        "--backlog-per-instance",
        ("endpoint.backlog_per_instance",),
        "FHE_BACKLOG_PER_INSTANCE",
        BACKLOG_PER_INSTANCE,
        "deploy: the backlog per instance target tracking keeps",
    ),
    Option(
        "--scale-in-cooldown",
        ("endpoint.scale_in_cooldown",),
        "FHE_SCALE_IN_COOLDOWN",
        SCALE_IN_COOLDOWN_S,
        "deploy: seconds before an instance is taken away",
    ),
    Option(
        "--scale-out-cooldown",
        ("endpoint.scale_out_cooldown",),
        "FHE_SCALE_OUT_COOLDOWN",
        SCALE_OUT_COOLDOWN_S,
        "deploy: seconds between two scale-outs",
    ),
    Option(
        "--keep",
        ("endpoint.keep_versions",),
        "FHE_KEEP_VERSIONS",
        0,
        "deploy, retire: keep the newest K served versions, retire the others (0: every version)",
    ),
    Option(
        "--older-than-days",
        ("endpoint.retire_after_days",),
        "FHE_RETIRE_AFTER_DAYS",
        0.0,
        "deploy, retire: retire the versions deployed more than D days ago, never the newest (0: none)",
    ),
    Option("--success-topic-arn", ("endpoint.success_topic_arn",), "FHE_SUCCESS_TOPIC_ARN", None, "deploy: SNS"),
    Option("--error-topic-arn", ("endpoint.error_topic_arn",), "FHE_ERROR_TOPIC_ARN", None, "deploy: SNS"),
)
# What a deployment does not record, so a flag for it overrides nothing of the deployment's.
UNRECORDED = frozenset(
    {"pipeline.job_instance_type", "endpoint.instance_type", "endpoint.min_instances", "endpoint.backlog_per_instance"}
)
_BY_FIELD = {target: option for option in OPTIONS for target in option.sets}


def _fallbacks(part: str) -> dict[str, Any]:
    return {t.split(".")[1]: o.fallback() for t, o in _BY_FIELD.items() if t.startswith(f"{part}.")}


def resolve(args: argparse.Namespace, outputs: dict[str, str] | None, note: Any = print) -> DeployedSettings:
    """The settings: each field from its flag if given, else from the deployment's ``outputs`` (read by
    ``from_outputs``, the one place that does), else its variable, else its default. A flag that differs from
    the deployment's value wins, and ``note`` says so."""
    if outputs is not None:
        deployed = from_outputs(
            outputs,
            region=args.region,
            job_instance_type=_BY_FIELD["pipeline.job_instance_type"].fallback(),
            endpoint_instance_type=_BY_FIELD["endpoint.instance_type"].fallback(),
        )
    else:
        deployed = DeployedSettings(
            PipelineSettings(**_fallbacks("pipeline"), region=args.region), EndpointSettings(**_fallbacks("endpoint"))
        )
    given: dict[str, dict[str, Any]] = {"pipeline": {}, "endpoint": {}}
    for option in OPTIONS:
        value = getattr(args, option.dest)
        if value is None:
            continue
        for target in option.sets:
            part, field = target.split(".")
            current = getattr(getattr(deployed, part), field)
            recorded = outputs is not None and target not in UNRECORDED
            if recorded and value != current and target == option.sets[0]:
                note(f"{option.flag} {value} overrides the deployment {args.deployment}'s {current}")
            given[part][field] = value
    return DeployedSettings(
        replace(deployed.pipeline, **given["pipeline"]), replace(deployed.endpoint, **given["endpoint"])
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
        kind = type(option.default) if isinstance(option.default, int | float) else str
        parser.add_argument(option.flag, type=kind, help=f"{option.help}; or {option.variable}{shown}")
    parser.add_argument("--region", default=aws.region())
    parser.add_argument(
        "--dataset", help="start, run: bundled data set name, local CSV/NPY file, or s3:// URI; predict: a CSV file"
    )
    parser.add_argument(
        "--param", action="append", default=[], metavar="Name=Value", help="pipeline parameter override (repeatable)"
    )
    parser.add_argument("--wait", action="store_true", help="with start: follow the execution to its end")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds to follow an execution")
    parser.add_argument(
        "--package-arn",
        help="approve: this package (default: the newest pending one); deploy: this Approved package (default: the "
        "newest Approved one), on its version's own endpoint; predict: the registered version to predict with",
    )
    parser.add_argument("--reject", action="store_true", help="approve: reject the package instead")
    parser.add_argument("--version", type=int, help="retire: the model version whose endpoint goes")
    parser.add_argument(
        "--drain",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="retire: wait up to SECONDS for the version's running bundles to end (default: refuse while any runs)",
    )
    parser.add_argument("--note", default="", help="approve: the approval description (who, why)")
    parser.add_argument(
        "--model-source", help="register-pretrained: the model's folder, or the S3 prefix that holds its files"
    )
    return parser


def note(line: str) -> None:
    print(f"note: {line}", file=sys.stderr, flush=True)


# The role each command needs: the settings field that holds it, and what it is.
ROLES_NEEDED = {
    "definition": ("pipeline.role_arn", "the pipeline's role"),
    "upsert": ("pipeline.role_arn", "the pipeline's role"),
    "run": ("pipeline.role_arn", "the pipeline's role"),
    "deploy": ("endpoint.role_arn", "the endpoint's execution role"),
}


def require_role(command: str, settings: DeployedSettings) -> None:
    """A command that names a role refuses to run without one, naming both ways to give it."""
    if command not in ROLES_NEEDED:
        return
    target, what = ROLES_NEEDED[command]
    part, field = target.split(".")
    if not getattr(getattr(settings, part), field):
        option = _BY_FIELD[target]
        raise SystemExit(
            f"fhe-pipeline {command}: {what} is not known: give --deployment PREFIX (its stacks name it) or "
            f"{option.flag} ARN (or set {option.variable})"
        )


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        outputs = read_outputs(args.deployment) if args.deployment else None
        settings = resolve(args, outputs, note)
        require_role(args.command, settings)
        if args.command == "predict":
            if not args.package_arn or not args.dataset:
                raise SystemExit("fhe-pipeline predict: give --package-arn ARN and --dataset records.csv")
            classes = clear_classes(args.package_arn, csv_path=Path(args.dataset))
            print(json.dumps({"model_package": args.package_arn, "classes": classes}, indent=2))
            return
        if args.command == "register-pretrained":
            if not args.model_source:
                raise SystemExit("fhe-pipeline register-pretrained: give --model-source FOLDER or s3://bucket/prefix/")
            pipeline = settings.pipeline
            registered = register_pretrained(
                aws.client("sagemaker"), aws.client("s3"), source=args.model_source,
                package_group=pipeline.package_group, model_bucket=pipeline.artifact_bucket,
                image_uri=pipeline.inference_image, report=note,
            )  # fmt: skip
            print(json.dumps(registered, indent=2))
            return
        if args.command == "retire":
            rule = args.keep is not None or args.older_than_days is not None
            if outputs is None or (args.version is not None and rule):
                raise SystemExit(
                    "fhe-pipeline retire: give --deployment PREFIX (its state machine) and either --version N or "
                    "a retention rule (--keep K / --older-than-days D, or the deployment's)"
                )
            machine = outputs["StateMachineArn"]
            if args.version is None:
                answer = retire_by_rule(settings.endpoint, machine, wait_seconds=args.drain, report=note)
            else:
                answer = retire(settings.endpoint, args.version, machine, wait_seconds=args.drain, report=note)
            print(json.dumps(answer, indent=2, default=str))
            return
        args.outputs = outputs
        run(args, settings.pipeline, settings.endpoint)
    except (
        DeploymentNotFound,
        ApprovalError,
        EndpointError,
        RetirementError,
        runs.PipelineRunError,
        PredictionError,
        SchemaError,
        PretrainedError,
    ) as error:
        raise SystemExit(f"fhe-pipeline {args.command}: {error}") from None


def run(args: argparse.Namespace, settings: PipelineSettings, endpoint: EndpointSettings) -> None:
    if args.command == "definition":
        print(runs.definition_json(settings))
        return
    if args.command == "approve":
        decision = "Rejected" if args.reject else "Approved"
        unfinished: PublicationError | None = None
        try:
            decided = approve(args.package_arn, settings.package_group, decision, args.note)
        except PublicationError as error:  # decided all the same: a rejection's revocation still follows
            decided, unfinished = error.decided, error
        outputs = getattr(args, "outputs", None)
        if args.reject and outputs:  # a served version stops being served at once
            decided["revocation"] = revoke(endpoint, decided["arn"], args.note, outputs["WorkflowTableName"])
        elif args.reject:
            note("without --deployment, a served version of it keeps its endpoint")
        print(json.dumps(decided, indent=2))
        if unfinished is not None:
            raise unfinished
        return
    if args.command == "deploy":
        which = args.package_arn or f"the newest Approved package of {endpoint.package_group}"
        print(f"deploying {which} on its version's endpoint ({endpoint.endpoint_name}-v<version>)…")
        deployed = deploy_endpoint(endpoint, wait_seconds=args.timeout, package_arn=args.package_arn, report=note)
        outputs = getattr(args, "outputs", None)
        if (endpoint.keep_versions or endpoint.retire_after_days) and outputs:
            # The retention rule, now that the new version serves; a version with running bundles stays for now.
            deployed["retention"] = retire_by_rule(endpoint, outputs["StateMachineArn"], report=note)
        elif endpoint.keep_versions or endpoint.retire_after_days:
            note("the retention rule needs --deployment (its running bundles); no version was retired")
        print(json.dumps(deployed, indent=2, default=str))
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
