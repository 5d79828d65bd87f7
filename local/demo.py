"""The whole product end to end, on whatever backend the AWS configuration points at (the local stack by default):

    deploy (fhe-deploy up: both stacks, the pipeline) → train → register → approve → deploy the async endpoint →
    client keys, encrypt, drop → Step Functions workflow → result bundle → decrypt → agreement with the clear
    model → audit report (audit-report.html and .json), time per stage.

    python -m local.demo [--samples 100] [--shard-size 25] [--report audit-report]

The ML-ops parts use the pipeline and deploy modules, the batch owner's parts the ``fhe-client`` commands; the
clear-model comparison at the end downloads ``model.tar.gz`` as ML ops would (a batch owner never sees it).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from audit import cli as audit_cli
from audit.collect import Window
from client import cli as client_cli
from client.model import ClientModel
from common import artifacts, aws
from common.archives import extract_tar
from common.model_package import describe
from common.s3uri import S3Uri
from infrastructure.deploy import Deployment, pipeline_settings
from infrastructure.deploy import outputs as deployment_outputs
from infrastructure.deploy import up as deploy_up
from lambdas.events import BundleRef
from pipelines import cli as pipeline_cli
from pipelines.deploy import DeploySettings, approve, deploy
from pipelines.pipeline import PIPELINE_NAME, PipelineSettings


@dataclass(frozen=True)
class DemoSettings:
    prefix: str = "fhe"
    package_group: str = "fhe-models"
    endpoint_name: str = "fhe-inference"
    pipeline_name: str = PIPELINE_NAME
    samples: int = 100
    shard_size: int = 25
    # With an engine (docker or podman), the deployment builds both images into its storage (nothing is pushed:
    # the local SageMaker runs them from there), on ``base_image`` if given.
    image_engine: str = ""
    base_image: str = ""

    def deployment(self, *, function_concurrency: int = 4) -> Deployment:
        return Deployment(
            prefix=self.prefix,
            endpoint_name=self.endpoint_name,
            pipeline_name=self.pipeline_name,
            package_group=self.package_group,
            function_concurrency=function_concurrency,
            build_images=bool(self.image_engine),
            image_engine=self.image_engine or "auto",
            base_image=self.base_image,
            push_images=False,
        )

    @property
    def stack_name(self) -> str:
        return self.deployment().product_stack

    @property
    def outputs(self) -> dict[str, str]:
        """The deployment's outputs (it must have been deployed)."""
        return _deployed(self.deployment())

    @property
    def bundle_bucket(self) -> str:
        return self.outputs["BundleBucketName"]

    @property
    def pipeline(self) -> PipelineSettings:
        return pipeline_settings(self.deployment(), self.outputs)


@cache
def _deployed(deployment: Deployment) -> dict[str, str]:
    return deployment_outputs(deployment)


@dataclass
class Timings:
    stages: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        print(f"\n== {name}", flush=True)
        started = time.monotonic()
        try:
            yield
        finally:
            self.stages[name] = round(time.monotonic() - started, 1)


def train_and_register(
    settings: DemoSettings,
    timeout: float = 1800.0,
    *,
    dataset: str = "breast_cancer",
    parameters: dict[str, str] | None = None,
) -> str:
    """Run the deployment's training pipeline on a bundled data set; returns the ARN of the model package it
    registered. ``parameters`` are pipeline parameters (``ModelType``, ``FheSampleSize``…)."""
    data_uri = pipeline_cli.stage_dataset(settings.pipeline, dataset)
    given = {"ModelPackageGroupName": settings.package_group, "InputDataUri": data_uri, **(parameters or {})}
    execution = pipeline_cli.start(settings.pipeline, [{"Name": k, "Value": v} for k, v in given.items()])
    pipeline_cli.follow(execution, timeout)
    result = pipeline_cli.outcome(execution)
    if result["status"] != "Succeeded" or "model_package" not in result:
        raise RuntimeError(f"the training pipeline ended {result['status']}: {result.get('failure_reason')}")
    return str(result["model_package"]["arn"])


def deploy_stack(settings: DemoSettings, *, function_concurrency: int = 4) -> dict[str, str]:
    """The whole deployment (``fhe-deploy up``): both stacks and the pipeline. It records approval decisions from
    then on. Returns its outputs."""
    _deployed.cache_clear()
    return deploy_up(settings.deployment(function_concurrency=function_concurrency), report=lambda line: None)


def deploy_endpoint(settings: DemoSettings, stack: dict[str, str]) -> None:
    """The newest approved model on the async endpoint, wired to the stack's notification topics."""
    endpoint = deploy(
        DeploySettings(
            package_group=settings.package_group,
            output_bucket=stack["BundleBucketName"],
            role_arn=stack["EndpointRoleArn"],
            endpoint_name=settings.endpoint_name,
            success_topic_arn=stack["EndpointSuccessTopicArn"],
            error_topic_arn=stack["EndpointErrorTopicArn"],
        )
    )
    if endpoint["status"] != "InService":
        raise RuntimeError(f"endpoint {settings.endpoint_name} is {endpoint['status']}")


def bundle_executions(state_machine_arn: str, bundle_id: str) -> list[str]:
    """The ARNs of a bundle's Step Functions executions (each named by the bundle id and an ETag digest)."""
    pages = aws.client("stepfunctions").get_paginator("list_executions").paginate(stateMachineArn=state_machine_arn)
    return [
        e["executionArn"]
        for page in pages
        for e in page["executions"]
        if BundleRef.bundle_of_execution(e["name"]) == bundle_id
    ]


def bundle_execution(state_machine_arn: str, bundle_id: str) -> dict[str, Any] | None:
    """The description of a bundle's execution, if it has started."""
    arns = bundle_executions(state_machine_arn, bundle_id)
    return dict(aws.client("stepfunctions").describe_execution(executionArn=arns[0])) if arns else None


def executed_states(execution_arn: str) -> list[str]:
    """The states the execution entered, in order, each once (the Map's iterations repeat theirs)."""
    sfn = aws.client("stepfunctions")
    names: list[str] = []
    pages = sfn.get_paginator("get_execution_history").paginate(executionArn=execution_arn)
    for event in (e for page in pages for e in page["events"]):
        name = event.get("stateEnteredEventDetails", {}).get("name")
        if name and name not in names:
            names.append(name)
    return names


def download_model(package_arn: str, folder: Path) -> Path:
    """The model package's ``model.tar.gz``, extracted into ``folder`` (as ML ops would; a batch owner cannot)."""
    package = describe(aws.client("sagemaker"), package_arn)
    uri = S3Uri.parse(package["InferenceSpecification"]["Containers"][0]["ModelDataUrl"])
    folder.mkdir(parents=True, exist_ok=True)
    aws.client("s3").download_file(uri.bucket, uri.key, str(folder / "model.tar.gz"))
    extract_tar(folder / "model.tar.gz", folder)
    (folder / "model.tar.gz").unlink()
    return folder


def clear_classes(package_arn: str, x: npt.NDArray[np.float64]) -> list[str]:
    """The clear (quantized) model's class names for ``x``: what FHE must reproduce."""
    from concrete.ml.common.serialization.loaders import loads

    from common.preprocessing import PreprocessingRecord

    with tempfile.TemporaryDirectory(prefix="fhe-model-") as scratch:
        folder = download_model(package_arn, Path(scratch))
        model = loads((folder / artifacts.MODEL_JSON).read_text())
        record = PreprocessingRecord.from_json((folder / artifacts.PREPROCESSING_JSON).read_text())
        return [record.classes[int(c)] for c in model.predict(record.transform(x), fhe="disable")]


def sample_rows(samples: int) -> npt.NDArray[np.float64]:
    """Records of the bundled breast-cancer data set, as a batch owner would hold them."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer().data
    rows = np.random.default_rng(7).permutation(len(data))[:samples]
    return np.asarray(data[rows], dtype=np.float64)


def write_csv(path: Path, feature_names: list[str], x: npt.NDArray[np.float64]) -> None:
    lines = [",".join(feature_names), *(",".join(repr(float(v)) for v in row) for row in x)]
    path.write_text("\n".join(lines) + "\n")


def _client(argv: list[str]) -> dict[str, Any]:
    """One ``fhe-client`` command; its JSON answer."""
    captured = io.StringIO()
    with redirect_stdout(captured):
        client_cli.main(argv)
    answer: dict[str, Any] = json.loads(captured.getvalue())
    return answer


def run(settings: DemoSettings, report: Path) -> dict[str, Any]:
    timings = Timings()
    since = datetime.now(tz=UTC) - timedelta(seconds=1)
    with timings.stage("deploy (fhe-deploy up: key, buckets, roles, functions, state machine, schedule, pipeline)"):
        stack = deploy_stack(settings)
        print(json.dumps(stack, indent=2))
    with timings.stage("train and register (SageMaker pipeline)"):
        package_arn = train_and_register(settings)
    with timings.stage("approve"):
        print(json.dumps(approve(package_arn, settings.package_group, "Approved", "demo: metrics reviewed")))
    with timings.stage("deploy the endpoint"):
        deploy_endpoint(settings, stack)
    with tempfile.TemporaryDirectory(prefix="fhe-demo-") as scratch:
        work = Path(scratch)
        x, source = sample_rows(settings.samples), work / "records.csv"
        common = ["--bucket", settings.bundle_bucket, "--group", settings.package_group, "--home", str(work / "home")]
        with timings.stage("client: keys, encrypt, drop"):
            keys = _client(["keys", *common, "--quiet"])
            model = ClientModel.for_package(keys["model_package"], work / "home")
            write_csv(source, model.preprocessing.feature_names, x)
            bundle = _client(
                [
                    "encrypt",
                    str(source),
                    "--out",
                    str(work / "bundle"),
                    "--shard-size",
                    str(settings.shard_size),
                    "--package-arn",
                    keys["model_package"],
                    *common,
                    "--quiet",
                ]
            )
            _client(["submit", str(work / "bundle"), "--package-arn", keys["model_package"], *common, "--quiet"])
        with timings.stage("workflow (Step Functions → async endpoint → outbox)"):
            _client(["wait", bundle["bundle_id"], "--timeout", "1800", *common, "--quiet"])
        with timings.stage("client: decrypt"):
            _client(["decrypt", bundle["bundle_id"], "--out", str(work / "predictions.csv"), *common, "--quiet"])
            lines = (work / "predictions.csv").read_text().splitlines()[1:]
            predicted = [line.split(",")[1] for line in lines]
        expected = clear_classes(package_arn, x)
    agreement = float(np.mean([p == e for p, e in zip(predicted, expected, strict=True)]))
    execution = bundle_execution(stack["StateMachineArn"], bundle["bundle_id"]) or {}
    with timings.stage("audit report"):
        audit = audit_cli.run(
            Window(since, datetime.now(tz=UTC) + timedelta(seconds=1)),
            report,
            deployment=settings.prefix,
            pipeline_name=settings.pipeline.pipeline_name,
            progress=lambda line: print(f"  {line}", flush=True),
        )
    return {
        "model_package": package_arn,
        "bundle_id": bundle["bundle_id"],
        "samples": len(predicted),
        "shards": bundle["shards"],
        "agreement_with_clear_model": round(agreement, 4),
        "execution": execution.get("executionArn"),
        "execution_status": execution.get("status"),
        "states": executed_states(execution["executionArn"]) if execution else [],
        "audit_report": audit["files"],
        "audit_checks": {c["name"]: "pass" if c["ok"] else c["failures"] for c in audit["checks"]},
        "seconds_per_stage": timings.stages,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m local.demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=int, default=DemoSettings.samples)
    parser.add_argument("--shard-size", type=int, default=DemoSettings.shard_size)
    parser.add_argument("--report", type=Path, default=Path("audit-report"), help="path prefix of the audit report")
    parser.add_argument(
        "--images",
        choices=("podman", "docker"),
        help="build both images with this engine and run the jobs and the endpoint from them (the local SageMaker "
        "must run that runtime: fhe-local up --runtime ENGINE)",
    )
    parser.add_argument("--base-image", default="", help="with --images: the images' base (python -m local.base_image)")
    args = parser.parse_args(argv)
    if args.images:
        from local import stack

        running = stack.running_runtime(stack.local_sagemaker())
        if running != args.images:
            parser.error(f"--images {args.images} needs `fhe-local up --runtime {args.images}` (it runs {running})")
    # The SageMaker SDK turns the root logger to INFO on import; the demo prints its own progress.
    logging.basicConfig(level=logging.WARNING, force=True)
    settings = DemoSettings(
        samples=args.samples, shard_size=args.shard_size, image_engine=args.images or "", base_image=args.base_image
    )
    summary = run(settings, args.report)
    print("\n== summary")
    print(f"  samples            {summary['samples']} in {summary['shards']} shards (bundle {summary['bundle_id']})")
    print(f"  agreement          {summary['agreement_with_clear_model']:.2%} with the clear model")
    print(f"  execution          {summary['execution_status']}: {' → '.join(summary['states'])}")
    audit_ok = all(result == "pass" for result in summary["audit_checks"].values())
    print(
        f"  audit report       {summary['audit_report']['html']} (consistency checks {'pass' if audit_ok else 'FAIL'})"
    )
    for stage, seconds in summary["seconds_per_stage"].items():
        print(f"  {seconds:8.1f} s        {stage}")
    print(json.dumps(summary, indent=2))
    ok = summary["execution_status"] == "SUCCEEDED" and summary["agreement_with_clear_model"] >= 0.99 and audit_ok
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
