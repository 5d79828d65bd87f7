"""What the integration tests share: a deployment serving a freshly trained model, a bundle dropped and its
execution awaited, and the local SageMaker's fault injection.

The actors work under their roles, as the demo does and as they would on AWS (``local/people.py``): administrator
credentials deploy (``fhe-deploy up``, ``owner add``), the trainer trains and registers, ML ops approve, deploy and
retire, each batch owner drops and reads its own bundles, the auditor reports (``Served.acting``). What a test
observes to assert (executions, internal records, injected faults) is read with the test's own, administrator,
credentials: no actor of the product does it."""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from aws_emulators.sagemaker.faults import FAULTS_FILE

from client.encrypt import encrypt_rows
from client.model import ClientModel
from client.transfer import submit
from common import aws
from common.bundle.manifest import Manifest
from common.bundle.schema import MANIFEST_NAME
from common.bundle.store import BundleLayout
from common.settings import DeployedSettings, PipelineSettings, from_outputs
from common.workflow import bundle_executions
from containers.enclave.image import ROOT as SOURCE_ROOT
from containers.enclave.image import SOURCES, build_image
from infrastructure import owners
from infrastructure.deployment import Deployment, up
from local import lifecycle
from local.people import People, acting_as, ensure_people, owner_actor
from pipelines.approval import approve
from pipelines.endpoint import deploy_endpoint
from pipelines.runs import train_and_register

# The pipeline on its own, without a deployment: one bucket for data and artifacts, the images by local name.
STANDALONE_PIPELINE = PipelineSettings(
    role_arn="arn:aws:iam::000000000000:role/fhe-pipeline",
    artifact_bucket="fhe-artifacts",
    data_bucket="fhe-artifacts",
    training_image="fhe-training:latest",
    inference_image="fhe-inference:latest",
)


OWNER = "tests"  # the batch owner of the integration tests' bundles
STANDALONE_BUNDLES = "fhe-bundles-test"  # the inference path tests' bundle bucket
STANDALONE_BUCKETS = (STANDALONE_PIPELINE.artifact_bucket, STANDALONE_BUNDLES)


def ensure_standalone_role() -> None:
    """The standalone pipeline's role in the local AWS, which enforces IAM: only a role that exists, trusts
    SageMaker and allows what the jobs and the endpoint do can be assumed for them. Its policy covers the
    standalone buckets and topics only (the tests of the product's own roles deploy it)."""
    iam = aws.client("iam")
    name = STANDALONE_PIPELINE.role_arn.rsplit("/", 1)[1]
    trust = {"Effect": "Allow", "Principal": {"Service": "sagemaker.amazonaws.com"}, "Action": "sts:AssumeRole"}
    with contextlib.suppress(iam.exceptions.EntityAlreadyExistsException):
        iam.create_role(
            RoleName=name, AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [trust]})
        )
    buckets = [f"arn:aws:s3:::{bucket}{suffix}" for bucket in STANDALONE_BUCKETS for suffix in ("", "/*")]
    allowed = [
        {"Effect": "Allow", "Action": "s3:*", "Resource": buckets},
        {"Effect": "Allow", "Action": "sns:Publish", "Resource": "*"},
    ]
    policy = json.dumps({"Version": "2012-10-17", "Statement": allowed})
    iam.put_role_policy(RoleName=name, PolicyName="standalone", PolicyDocument=policy)


def deployment_for(name: str, **choices: Any) -> Deployment:
    """A deployment of its own for one test module: every name carries ``name``."""
    return Deployment(
        prefix=f"fhe-{name}-test",
        package_group=f"fhe-{name}-tests",
        endpoint_name=f"fhe-{name}-test",
        pipeline_name=f"fhe-{name}-test-training",
        **choices,
    )


@dataclass
class Served:
    """A deployment up, a model trained, registered, approved and on the endpoint."""

    deployment: Deployment
    outputs: dict[str, str]
    settings: DeployedSettings
    package_arn: str
    endpoint: str  # the endpoint serving the package's version
    people: People

    @property
    def layout(self) -> BundleLayout:
        return BundleLayout(self.outputs["BundleBucketName"], OWNER)

    def acting(self, actor: str) -> contextlib.AbstractContextManager[None]:
        """Within: this process's AWS clients are ``actor``'s ("trainer", "ml-ops", "auditor" or an owner's)."""
        return acting_as(self.people, actor)

    def as_owner(self, owner: str = OWNER) -> contextlib.AbstractContextManager[None]:
        return self.acting(owner_actor(owner))

    def add_owner(self, owner: str) -> None:
        """``fhe-deploy owner add`` (the administrator), and the people's profiles made again to include it."""
        owners.add(self.deployment.prefix, owner, report=lambda line: None)
        self.people = ensure_people(self.deployment.prefix, self.outputs)

    @property
    def state_machine_arn(self) -> str:
        return self.outputs["StateMachineArn"]


def deploy_and_serve(deployment: Deployment, note: str, **training: Any) -> Served:
    """``fhe-deploy up`` and ``owner add`` for the tests' owner (the administrator; first: it records the approval
    that follows), the pipeline run to a registered model (the trainer), its approval with ``note`` and the
    endpoint serving it (ML ops)."""
    outputs = up(deployment, report=lambda line: None)
    owners.add(deployment.prefix, OWNER, report=lambda line: None)
    people = ensure_people(deployment.prefix, outputs)
    settings = from_outputs(outputs, region=aws.region())
    with acting_as(people, "trainer"):
        package_arn = train_and_register(settings.pipeline, **training)
    with acting_as(people, "ml-ops"):
        approve(package_arn, settings.pipeline.package_group, "Approved", note)
        endpoint = deploy_endpoint(settings.endpoint)["endpoint"]
    return Served(deployment, outputs, settings, package_arn, endpoint, people)


def drop(
    layout: BundleLayout,
    model: ClientModel,
    x: npt.NDArray[np.float64],
    folder: Path,
    *,
    shard_size: int,
    skip_shard: bool = False,
) -> Manifest:
    """Encrypt ``x`` as a bundle named after ``folder`` and drop it; with ``skip_shard`` its second shard never
    reaches the inbox (the manifest does, last, as always)."""
    manifest = encrypt_rows(model, x, folder, shard_size=shard_size, bundle_id=folder.name, progress=False)
    if not skip_shard:
        submit(aws.client("s3"), layout, folder, progress=False)
        return manifest
    s3, prefix = aws.client("s3"), layout.request_prefix(folder.name)
    first = manifest.shards[0].key
    s3.put_object(Bucket=prefix.bucket, Key=prefix.join(first).key, Body=(folder / first).read_bytes())
    s3.put_object(Bucket=prefix.bucket, Key=prefix.join(MANIFEST_NAME).key, Body=manifest.to_json())
    return manifest


def bundle_execution(state_machine_arn: str, bundle_id: str) -> dict[str, Any] | None:
    """The description of a bundle's execution, if it has started."""
    sfn = aws.client("stepfunctions")
    arns = bundle_executions(sfn, state_machine_arn, bundle_id)
    return dict(sfn.describe_execution(executionArn=arns[0])) if arns else None


def settle(state_machine_arn: str, bundle_id: str, timeout: float = 600.0) -> dict[str, Any]:
    """The bundle's execution once it has ended."""
    deadline = time.monotonic() + timeout
    while True:
        execution = bundle_execution(state_machine_arn, bundle_id)
        if execution is not None and execution["status"] != "RUNNING":
            return execution
        assert time.monotonic() < deadline, f"bundle {bundle_id}: {execution and execution['status']} after {timeout} s"
        time.sleep(1.0)


@contextmanager
def injected_faults(endpoint_name: str, rules: list[dict[str, Any]]) -> Iterator[None]:
    """The local SageMaker fails or delays the endpoint's invocations as ``rules`` say, until the block ends."""
    path = lifecycle.sagemaker_state_dir() / FAULTS_FILE
    path.write_text(json.dumps({endpoint_name: rules}))
    try:
        yield
    finally:
        path.write_text(json.dumps({endpoint_name: []}))


def image_changed_by_one_byte(folder: Path, out: Path) -> Path:
    """The enclave image built from its sources with one byte added (a newline at the end of models.py): the same
    behaviour, another measurement."""
    sources = folder / "changed-sources"
    for name in SOURCES:
        (sources / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SOURCE_ROOT / name, sources / name)
    models = sources / "containers/enclave/models.py"
    models.write_bytes(models.read_bytes() + b"\n")
    return build_image(out, root=sources)
