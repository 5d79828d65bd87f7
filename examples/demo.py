"""The whole product end to end, on whatever backend the AWS configuration points at (the local stack by default):

    deploy (fhe-deploy up: both stacks, the pipeline; fhe-deploy owner add demo) → train → register → approve →
    deploy the async endpoint → client keys, encrypt, drop → Step Functions workflow → result bundle → decrypt →
    agreement with the clear model → retraining: a new version served beside the first, a bundle for each
    delivered, the first retired → with an enclave image, the enclave path: a 500-tree XGBoost model
    (ModelKind=enclave) trained, approved; the same owner's records encrypted under a data key KMS makes on the
    enclave key, the workflow's shards served by the enclave fleet scaled from zero, the sealed result opened by the
    owner → audit report (audit-report.html and .json; the enclave shards' attestations checked) → agreement with
    the clear model, time per stage.

    python -m examples.demo [--samples 100] [--shard-size 25] [--report audit-report]
        [--enclave-image EIF --enclave-image-sha384 PCR0 --enclave-ami AMI --enclave-subnets S]
                                (``make demo`` gives the local stack's: ``python -m local.lifecycle enclave-image``)

The ML-ops parts use the pipeline and deploy modules, the batch owner's parts the client library (``BatchClient``,
what ``fhe-client`` runs); the
clear-model comparison at the end downloads ``model.tar.gz`` as ML ops would (a batch owner never sees it).

Administrator credentials deploy, and nothing else: every later step runs as its actor, under the actor's role
(``local/people.py``: the trainer, ML ops who approve and deploy, the batch owner ``demo``, which ``fhe-deploy
owner add demo`` makes, the auditor), so a policy that lacks what a step needs fails that step.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from audit import report as audit_report
from audit.collect import Window
from client.batch_client import BatchClient, ClientSettings
from common import aws
from common.settings import DeployedSettings, from_outputs
from common.workflow import bundle_executions, executed_states
from containers.training.data import sample_uci_records
from infrastructure import owners, status
from infrastructure.deployment import Deployment, up
from infrastructure.enclave_fleet import EnclaveFleet
from local.people import People, acting_as, ensure_people, owner_actor
from pipelines.approval import approve
from pipelines.clear_predictions import clear_classes
from pipelines.endpoint import deploy_endpoint
from pipelines.retirement import retire
from pipelines.runs import train_and_register


@dataclass(frozen=True)
class DemoSettings:
    samples: int = 100
    shard_size: int = 25
    model_type: str = "logistic_regression"
    # With an engine (docker or podman), the deployment builds both images into its storage (nothing is pushed:
    # the local SageMaker runs them from there), on ``base_image`` if given.
    image_engine: str = ""
    base_image: str = ""
    enclave: EnclaveFleet | None = None  # the enclave path, run after the FHE one

    @property
    def training(self) -> dict[str, Any]:
        """The breast-cancer file as UCI distributes it: its ``id`` column is no feature (the client keeps it and
        keys the predictions by it), its label is ``diagnosis``."""
        parameters = {"LabelColumn": "diagnosis", "IdColumns": "id", "ModelType": self.model_type}
        return {"dataset": "breast_cancer_uci", "parameters": parameters}

    def deployment(self) -> Deployment:
        return Deployment(
            build_images=bool(self.image_engine),
            image_engine=self.image_engine or "auto",
            base_image=self.base_image,
            push_images=False,
            enclave=self.enclave,
        )

    @property
    def enclave_training(self) -> dict[str, Any]:
        """The same file for a model FHE cannot carry: XGBoost's 500 trees of depth 4, served in the enclave."""
        training = self.training
        parameters = {**training["parameters"], "ModelKind": "enclave", "ModelType": "xgboost"}
        return {**training, "parameters": parameters}


DEMO_OWNER = "demo"
WORKFLOW_STAGE = "workflow (Step Functions → async endpoint → outbox)"
ENCLAVE_WORKFLOW_STAGE = "enclave: workflow (Step Functions → shard queue → enclave fleet from zero → outbox)"


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


def run(settings: DemoSettings, report: Path) -> dict[str, Any]:
    timings, deployment = Timings(), settings.deployment()
    since = datetime.now(tz=UTC) - timedelta(seconds=1)
    with timings.stage("deploy (fhe-deploy up: key, buckets, roles, functions, state machine, schedule, pipeline)"):
        stack = up(deployment, report=lambda line: None)
        print(json.dumps(stack, indent=2))
    deployed = from_outputs(stack, region=aws.region())
    group = deployed.pipeline.package_group
    owners.add(deployment.prefix, DEMO_OWNER, report=lambda line: None)  # fhe-deploy owner add demo
    people = ensure_people(deployment.prefix, stack)  # the last use of administrator credentials
    client = owner_actor(DEMO_OWNER)
    with timings.stage("train and register (SageMaker pipeline)"), acting_as(people, "trainer"):
        package_arn = train_and_register(deployed.pipeline, **settings.training)
    with timings.stage("approve"), acting_as(people, "ml-ops"):
        print(json.dumps(approve(package_arn, group, "Approved", "demo: metrics reviewed")))
    with timings.stage("deploy the endpoint"), acting_as(people, "ml-ops"):
        served = deploy_endpoint(deployed.endpoint)
        print(
            f"endpoint {served['endpoint']} serves model version {served['version']}, scaling 0 to "
            f"{served['scaling']['max_instances']} instances"
        )
    with tempfile.TemporaryDirectory(prefix="fhe-demo-") as scratch:
        work = Path(scratch)
        source = work / "records.csv"
        x = sample_uci_records(settings.samples, source)  # id, diagnosis, the features: as the owner has them
        # The owner's client: its AWS clients are made at each call, under the role ``acting_as`` sets.
        owner = BatchClient(
            ClientSettings.for_deployment(stack, DEMO_OWNER, home=work / "home"),
            notes=lambda line: print(f"  {line}", flush=True),  # the estimate, the accuracy against the labels
        )
        with timings.stage("client: keys, encrypt, drop"), acting_as(people, client):
            keys = owner.keys()
            bundle = owner.encrypt(
                source,
                work / "bundle",
                shard_size=settings.shard_size,
                package_arn=keys.model_package,
                label_column="diagnosis",
            )  # the ids come back by themselves: the model records id as its IdColumns
            owner.submit(bundle.folder)
        with timings.stage(WORKFLOW_STAGE), acting_as(people, client):
            owner.wait(bundle.bundle_id, timeout=1800)
        with timings.stage("client: decrypt"), acting_as(people, client):
            decrypted = owner.decrypt(bundle.bundle_id, work / "predictions.csv")
            with decrypted.predictions.open(newline="") as handle:
                keyed_by = next(iter(csv.reader(handle)), [None])[0]
            predicted = decrypted.predicted_classes
        with acting_as(people, "trainer"):  # ML ops' own copy of the model, for the comparison
            expected = clear_classes(package_arn, x)
        versions = rollover(
            deployed, stack["StateMachineArn"], package_arn, source, work, owner, timings, people, settings.training
        )
    agreement = float(np.mean([p == e for p, e in zip(predicted, expected, strict=True)]))
    # The enclave path, before the audit: the report shows what served its shards, as their enclaves attested.
    enclave = None
    if settings.enclave:
        with tempfile.TemporaryDirectory(prefix="fhe-demo-enclave-") as scratch:
            work = Path(scratch)
            source = work / "records.csv"
            x = sample_uci_records(settings.samples, source)  # the same records as above
            owner = BatchClient(
                ClientSettings.for_deployment(stack, DEMO_OWNER, home=work / "home"),
                notes=lambda line: print(f"  {line}", flush=True),
            )
            enclave = enclave_path(deployed, source, x, work, owner, timings, people, settings)
    with timings.stage("audit report"), acting_as(people, "auditor"):
        sfn = aws.client("stepfunctions")
        arns = bundle_executions(sfn, stack["StateMachineArn"], bundle.bundle_id, DEMO_OWNER)
        execution = sfn.describe_execution(executionArn=arns[0]) if arns else {}
        states = executed_states(sfn, execution["executionArn"]) if execution else []
        audit = audit_report.run(
            Window(since, datetime.now(tz=UTC) + timedelta(seconds=1)),
            report,
            deployment=deployment.prefix,
            pipeline_name=deployment.pipeline_name,
            progress=lambda line: print(f"  {line}", flush=True),
        )
    with timings.stage("what ML ops watch (fhe-deploy status)"), acting_as(people, "ml-ops"):
        print(status.describe(status.status(deployment.prefix, hours=1)), flush=True)
    return {
        "model_package": package_arn,
        "bundle_id": bundle.bundle_id,
        "samples": len(predicted),
        "shards": len(bundle.manifest.shards),
        "agreement_with_clear_model": round(agreement, 4),
        "predictions_keyed_by": keyed_by,
        "accuracy_against_the_owners_labels": decrypted.accuracy.to_dict() if decrypted.accuracy else None,
        "estimate": bundle.estimate.to_dict() if bundle.estimate else None,
        "workflow_seconds": timings.stages[WORKFLOW_STAGE],
        "execution_seconds": (
            round((execution["stopDate"] - execution["startDate"]).total_seconds(), 1)
            if execution.get("stopDate")
            else None
        ),
        "execution": execution.get("executionArn"),
        "execution_status": execution.get("status"),
        "states": states,
        "versions": versions,
        "audit_report": audit["files"],
        "audit_checks": {c["name"]: "pass" if c["ok"] else c["failures"] for c in audit["checks"]},
        # What each owner used of the endpoints and what it costs (fhe-audit usage), and its reconciliation.
        "usage": {
            "owners": {row["owner"]: row for row in audit["usage"]["owners"]},
            "reconciliation": audit["usage"]["reconciliation"],
        },
        "enclave": enclave,
        "seconds_per_stage": timings.stages,
    }


def rollover(
    deployed: DeployedSettings,
    state_machine_arn: str,
    first: str,
    source: Path,
    work: Path,
    owner: BatchClient,
    timings: Timings,
    people: People,
    training: dict[str, Any],
) -> dict[str, Any]:
    """Retraining without stranding a batch owner: a new version served beside the first, a bundle for each
    delivered, then the first version retired once its bundles are done."""
    client = owner_actor(DEMO_OWNER)
    with timings.stage("retrain: a new version trained, approved and served beside the first"):
        with acting_as(people, "trainer"):
            second = train_and_register(deployed.pipeline, **training)
        with acting_as(people, "ml-ops"):
            approve(second, deployed.pipeline.package_group, "Approved", "demo: retrained")
            served = deploy_endpoint(deployed.endpoint, package_arn=second)
        print(
            f"endpoint {served['endpoint']} serves model version {served['version']}; served versions: "
            f"{', '.join(str(v) for v in served['served_versions'])}"
        )
    with timings.stage("client: a bundle for each version, both delivered"), acting_as(people, client):
        owner.keys(second)  # beside version 1's keys
        delivered = {}
        for package in (first, second):
            version = package.rsplit("/", 1)[-1]
            done = owner.run(source, work / f"predictions-v{version}.csv", package_arn=package)
            delivered[f"v{version}"] = done.bundle_id
            print(f"version {version}: bundle {done.bundle_id} delivered, {done.decrypted.rows} predictions")
    with timings.stage("retire the first version"), acting_as(people, "ml-ops"):
        retired = retire(
            deployed.endpoint, int(first.rsplit("/", 1)[-1]), state_machine_arn, wait_seconds=600, report=print
        )
    return {"bundles": delivered, "retired": retired["retired"], "served_versions": retired["served_versions"]}


def enclave_path(
    deployed: DeployedSettings,
    source: Path,
    x: Any,
    work: Path,
    owner: BatchClient,
    timings: Timings,
    people: People,
    settings: DemoSettings,
) -> dict[str, Any]:
    """The same owner's records through the enclave path: a model FHE cannot carry, served in an attested enclave
    (the key released to the deployed measurement only), the result sealed to the owner."""
    client = owner_actor(DEMO_OWNER)
    with timings.stage("enclave: train and register a 500-tree XGBoost model (ModelKind=enclave)"):
        with acting_as(people, "trainer"):
            package_arn = train_and_register(deployed.pipeline, **settings.enclave_training)
        with acting_as(people, "ml-ops"):
            print(json.dumps(approve(package_arn, deployed.pipeline.package_group, "Approved", "demo: enclave model")))
    with timings.stage("enclave: client keys, encrypt under a KMS data key, drop"), acting_as(people, client):
        keys = owner.keys(package_arn)  # the owner's own key pair; no evaluation key
        bundle = owner.encrypt(
            source, work / "enclave-bundle", shard_size=settings.shard_size, package_arn=keys.model_package,
            label_column="diagnosis",
        )  # fmt: skip
        owner.submit(bundle.folder)
    with timings.stage(ENCLAVE_WORKFLOW_STAGE), acting_as(people, client):
        owner.wait(bundle.bundle_id, timeout=1800)
    with timings.stage("enclave: client opens the sealed result"), acting_as(people, client):
        decrypted = owner.decrypt(bundle.bundle_id, work / "enclave-predictions.csv")
    with acting_as(people, "trainer"):
        expected = clear_classes(package_arn, x)
    agreement = float(np.mean([p == e for p, e in zip(decrypted.predicted_classes, expected, strict=True)]))
    return {
        "model_package": package_arn,
        "bundle_id": bundle.bundle_id,
        "samples": decrypted.rows,
        "shards": len(bundle.manifest.shards),
        "agreement_with_clear_model": round(agreement, 4),
        "accuracy_against_the_owners_labels": decrypted.accuracy.to_dict() if decrypted.accuracy else None,
        "estimate": bundle.estimate.to_dict() if bundle.estimate else None,
        "enclave_measurement": settings.enclave.measurement() if settings.enclave else None,
        "workflow_seconds": timings.stages[ENCLAVE_WORKFLOW_STAGE],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m examples.demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=int, default=DemoSettings.samples)
    parser.add_argument("--shard-size", type=int, default=DemoSettings.shard_size)
    parser.add_argument(
        "--model-type", default=DemoSettings.model_type, help="the pipeline's ModelType (%(default)s; decision_tree…)"
    )
    parser.add_argument("--report", type=Path, default=Path("audit-report"), help="path prefix of the audit report")
    parser.add_argument(
        "--images",
        choices=("podman", "docker"),
        help="build both images with this engine and run the jobs and the endpoint from them (the local SageMaker "
        "must run that runtime: python -m local.lifecycle up --runtime ENGINE)",
    )
    parser.add_argument("--base-image", default="", help="with --images: the images' base (python -m local.base_image)")
    enclave = parser.add_argument_group("the enclave path, run after the FHE one where an image is given")
    enclave.add_argument("--enclave-image", type=Path, help="the enclave's image (EIF)")
    enclave.add_argument("--enclave-image-sha384", default="", help="its measurement, where nitro-cli cannot read it")
    enclave.add_argument("--enclave-ami", default="", help="the fleet's AMI")
    enclave.add_argument("--enclave-subnets", default="", help="the fleet's subnets, comma-separated")
    args = parser.parse_args(argv)
    fleet = None
    if args.enclave_image:
        fleet = EnclaveFleet(
            image=args.enclave_image,
            image_sha384=args.enclave_image_sha384,
            ami=args.enclave_ami,
            subnets=tuple(s for s in args.enclave_subnets.split(",") if s),
            wake_after_seconds=10,  # the demo waits for its bundle: an instance soon after the first shard waits
        )
    if args.images:
        from local import lifecycle

        running = lifecycle.running_runtime(lifecycle.local_sagemaker())
        if running != args.images:
            parser.error(
                f"--images {args.images} needs `python -m local.lifecycle up --runtime {args.images}` "
                f"(it runs {running})"
            )
    # The SageMaker SDK turns the root logger to INFO on import; the demo prints its own progress.
    logging.basicConfig(level=logging.WARNING, force=True)
    settings = DemoSettings(
        samples=args.samples,
        shard_size=args.shard_size,
        model_type=args.model_type,
        image_engine=args.images or "",
        base_image=args.base_image,
        enclave=fleet,
    )
    summary = run(settings, args.report)
    print("\n== summary")
    print(f"  samples            {summary['samples']} in {summary['shards']} shards (bundle {summary['bundle_id']})")
    print(f"  agreement          {summary['agreement_with_clear_model']:.2%} with the clear model")
    print(f"  predictions        keyed by {summary['predictions_keyed_by']}, kept on the client only")
    scored = summary["accuracy_against_the_owners_labels"]
    if scored:
        print(f"  owner's labels     accuracy {scored['accuracy']:.2%} ({scored['correct']} of {scored['rows']})")
    made = summary["estimate"]
    if made:
        print(
            f"  estimate           {made['seconds']} s and {made['cost']:.4f} {made['currency']} before paying; the "
            f"workflow took {summary['workflow_seconds']} s from the drop to the result (its execution "
            f"{summary['execution_seconds']} s)"
        )
    print(f"  execution          {summary['execution_status']}: {' → '.join(summary['states'])}")
    audit_ok = all(result == "pass" for result in summary["audit_checks"].values())
    print(
        f"  audit report       {summary['audit_report']['html']} (consistency checks {'pass' if audit_ok else 'FAIL'})"
    )
    enclave = summary["enclave"]
    if enclave:
        print(
            f"  enclave path       {enclave['samples']} samples in {enclave['shards']} shards, "
            f"{enclave['agreement_with_clear_model']:.2%} agreement with the clear 500-tree model, "
            f"{enclave['workflow_seconds']} s from the drop to the sealed result (measurement "
            f"{str(enclave['enclave_measurement'])[:16]}…)"
        )
    for stage, seconds in summary["seconds_per_stage"].items():
        print(f"  {seconds:8.1f} s        {stage}")
    print(json.dumps(summary, indent=2))
    ok = summary["execution_status"] == "SUCCEEDED" and summary["agreement_with_clear_model"] >= 0.99 and audit_ok
    ok = ok and (enclave is None or enclave["agreement_with_clear_model"] == 1.0)
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
