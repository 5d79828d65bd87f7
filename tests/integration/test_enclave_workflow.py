"""The enclave path end to end on the local stack, IAM enforced: ``fhe-deploy up`` with the enclave image deploys
the key pinned to its measurement, the shard queue and the fleet (minimum 0); the training pipeline registers an
enclave model, approved; an owner encrypts, drops and decrypts with the same client as for FHE; the real workflow
queues the shards, the local fleet scales up from zero as the group's policies would and serves them through
enclaves started from the image the group names; the predictions agree 100% with the clear model. A second owner
cannot have the first's bundle served as his; an image replaced in the artifact bucket (changed by one byte) gets
no key, and its bundle is quarantined as attestation_refused naming its measurement."""

from __future__ import annotations

import base64
import csv
import json
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aws_emulators.nitro.measurement import image_sha384

from client.batch_client import BatchClient, ClientSettings
from client.enclave_bundle import owner_key, public_bytes
from client.errors import BundleQuarantined
from common import aws
from common.bundle.schema import MANIFEST_NAME
from common.bundle.store import BundleLayout
from common.settings import from_outputs
from common.workflow import bundle_executions
from containers.training.data import sample_uci_records
from infrastructure import owners
from infrastructure.deployment import up
from infrastructure.enclave_fleet import EnclaveFleet
from local import lifecycle
from pipelines.approval import approve
from pipelines.clear_predictions import clear_classes
from pipelines.runs import train_and_register
from tests.integration.helpers import deployment_for, image_changed_by_one_byte
from tests.leaks import numbers_in_text, plaintext_fragments

pytestmark = pytest.mark.integration
SETTLE_TIMEOUT = 600.0


@dataclass
class EnclaveDeployment:
    outputs: dict[str, str]
    package_arn: str
    image: Path
    measurement: str
    sessions: dict[str, Any]  # each owner's role
    folder: Path

    def client(self, owner: str) -> BatchClient:
        settings = ClientSettings.for_deployment(self.outputs, owner, home=self.folder / f"{owner}-home")
        return BatchClient(settings, session=self.sessions[owner])

    @property
    def group(self) -> str:
        return self.outputs["EnclaveFleetName"]


@pytest.fixture(scope="module")
def deployed(local_stack: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> EnclaveDeployment:
    folder = tmp_path_factory.mktemp("enclave-workflow")
    built = lifecycle.enclave_image(folder / "enclave.eif")
    fleet = EnclaveFleet(
        image=built.image,
        image_sha384=built.image_sha384,
        ami=built.ami,
        subnets=(built.subnet,),
        max_instances=2,
        shards_per_instance=2,
        wake_after_seconds=3,
    )
    deployment = deployment_for("enclave", function_concurrency=2, enclave=fleet)
    outputs = up(deployment, report=lambda line: None)
    sessions = {}
    for owner in ("alice", "bob"):
        role = owners.add(deployment.prefix, owner, report=lambda line: None)["OwnerRoleArn"]
        sessions[owner] = aws.role_session(role, owner)
    pipeline = from_outputs(outputs, region=aws.region()).pipeline
    parameters = {"ModelKind": "enclave", "ModelType": "xgboost", "NEstimators": "50"}
    package_arn = train_and_register(pipeline, parameters=parameters)
    approve(package_arn, pipeline.package_group, "Approved", "enclave workflow tests")
    return EnclaveDeployment(outputs, package_arn, built.image, built.image_sha384, sessions, folder)


class CapacityWatch(threading.Thread):
    """The group's desired capacity, sampled while a block runs."""

    def __init__(self, group: str) -> None:
        super().__init__(daemon=True)
        self.group = group
        self.seen: list[int] = []
        self.done = threading.Event()

    def run(self) -> None:
        autoscaling = aws.client("autoscaling")
        while not self.done.wait(0.5):
            (described,) = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[self.group])[
                "AutoScalingGroups"
            ]
            self.seen.append(int(described["DesiredCapacity"]))

    def __enter__(self) -> CapacityWatch:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.join()


def _records(d: EnclaveDeployment, name: str, samples: int) -> tuple[Path, Any]:
    source = d.folder / f"{name}.csv"
    return source, sample_uci_records(samples, source)


def _fleet_at_zero(group: str, timeout: float = 180.0) -> None:
    """ML ops set the group to zero instances; wait until the local fleet has stopped every instance."""
    aws.client("autoscaling").set_desired_capacity(AutoScalingGroupName=group, DesiredCapacity=0)
    deadline = time.monotonic() + timeout
    while list(lifecycle.fleet_state_dir().glob("*/pids")):
        assert time.monotonic() < deadline, "the fleet's instances did not stop"
        time.sleep(0.5)


def test_an_owners_enclave_bundle_runs_through_the_workflow_on_a_fleet_scaled_from_zero(
    deployed: EnclaveDeployment,
) -> None:
    d = deployed
    (group,) = aws.client("autoscaling").describe_auto_scaling_groups(AutoScalingGroupNames=[d.group])[
        "AutoScalingGroups"
    ]
    assert group["DesiredCapacity"] == 0  # nothing runs until a shard waits
    source, x = _records(d, "alice", 40)
    alice = d.client("alice")
    keys = alice.keys()
    assert keys.model.kind == "enclave" and keys.evaluation_key is None
    bundle = alice.encrypt(
        source, d.folder / "alice-bundle", shard_size=10, id_columns=["id"], label_column="diagnosis"
    )
    with CapacityWatch(d.group) as watch:
        alice.submit(bundle.folder)
        alice.wait(bundle.bundle_id, timeout=SETTLE_TIMEOUT)
    decrypted = alice.decrypt(bundle.bundle_id, d.folder / "alice-predictions.csv")
    expected = clear_classes(d.package_arn, x)
    assert decrypted.predicted_classes == expected  # 100% agreement with the clear model
    with decrypted.predictions.open(newline="") as handle:
        assert next(csv.reader(handle))[0] == "id"  # keyed by the ids kept on the owner's machine
    assert watch.seen and watch.seen[0] == 0 and max(watch.seen) >= 1, watch.seen  # scaled up from zero

    sfn = aws.client("stepfunctions")
    (arn,) = bundle_executions(sfn, d.outputs["StateMachineArn"], bundle.bundle_id, "alice")
    assert sfn.describe_execution(executionArn=arn)["status"] == "SUCCEEDED"
    entered = [
        event["stateEnteredEventDetails"]["name"]
        for event in sfn.get_execution_history(executionArn=arn, maxResults=1000)["events"]
        if "stateEnteredEventDetails" in event
    ]
    assert "InferShardsInEnclave" in entered and "InferShards" not in entered, entered

    # No record or prediction in any object of the bundle bucket, nor in any log of the fleet or the stack.
    fragments = plaintext_fragments(x, x) + [p.encode() for p in decrypted.predictions.read_text().split() if "." in p]
    s3, bucket = aws.client("s3"), d.outputs["BundleBucketName"]
    for listed in s3.list_objects_v2(Bucket=bucket).get("Contents", []):
        body = s3.get_object(Bucket=bucket, Key=listed["Key"])["Body"].read()
        assert not numbers_in_text(body, fragments), listed["Key"]
    logs = [*lifecycle.fleet_state_dir().rglob("*.log"), *lifecycle.stack_dir().glob("*.log")]
    assert any(log.name == "parent.log" for log in logs) and any(log.name == "enclave.log" for log in logs)
    for log in logs:
        assert not numbers_in_text(log.read_bytes(), fragments), log


def test_another_owner_cannot_have_a_copied_bundle_served_as_his(deployed: EnclaveDeployment) -> None:
    """Bob has a copy of Alice's ciphertext and encrypted data key: dropped in his own inbox with his own public
    key, KMS refuses the key under his name and nothing is sealed to him."""
    d = deployed
    source, _ = _records(d, "alice-2", 10)
    alice, bob = d.client("alice"), d.client("bob")
    alice.keys()
    bundle = alice.encrypt(source, d.folder / "alice-2", shard_size=10)
    bob.keys()
    copied = d.folder / "bob-copy"
    shutil.copytree(bundle.folder, copied)
    manifest = json.loads((copied / MANIFEST_NAME).read_bytes())
    bobs_key = public_bytes(owner_key(d.folder / "bob-home"))
    manifest["enclave"]["owner_public_key"] = base64.b64encode(bobs_key).decode()
    (copied / MANIFEST_NAME).write_text(json.dumps(manifest))
    bob.submit(copied)
    with pytest.raises(BundleQuarantined) as quarantined:
        bob.wait(bundle.bundle_id, timeout=SETTLE_TIMEOUT)
    assert quarantined.value.reason["code"] == "key_refused", quarantined.value.reason
    layout = BundleLayout(d.outputs["BundleBucketName"], "bob")
    listed = aws.client("s3").list_objects_v2(Bucket=layout.bucket, Prefix=layout.result_prefix(bundle.bundle_id).key)
    assert not listed.get("Contents"), "nothing may be sealed to Bob"


def test_an_image_changed_by_one_byte_gets_no_key_and_its_bundle_is_quarantined_naming_it(
    deployed: EnclaveDeployment, tmp_path: Path
) -> None:
    """Someone replaces the enclave image in the artifact bucket: instances boot from it, but KMS releases no key
    to its measurement; the bundle is quarantined as attestation_refused, naming the measurement that asked."""
    d = deployed
    changed = image_changed_by_one_byte(tmp_path, tmp_path / "changed.eif")
    uri = d.outputs["EnclaveImageUri"].removeprefix("s3://").split("/", 1)
    s3 = aws.client("s3")
    _fleet_at_zero(d.group)
    s3.upload_file(str(changed), uri[0], uri[1])
    try:
        source, _ = _records(d, "alice-3", 10)
        alice = d.client("alice")
        alice.keys()
        bundle = alice.encrypt(source, d.folder / "alice-3", shard_size=10)
        alice.submit(bundle.folder)
        with pytest.raises(BundleQuarantined) as quarantined:
            alice.wait(bundle.bundle_id, timeout=SETTLE_TIMEOUT)
    finally:
        _fleet_at_zero(d.group)
        s3.upload_file(str(d.image), uri[0], uri[1])
    reason = quarantined.value.reason
    assert reason["code"] == "attestation_refused", reason
    assert image_sha384(changed) in str(reason["message"]) and d.measurement not in str(reason["message"])
    layout = BundleLayout(d.outputs["BundleBucketName"], "alice")
    inbox = s3.list_objects_v2(Bucket=layout.bucket, Prefix=layout.request_prefix(bundle.bundle_id).key + "/")
    assert len(inbox.get("Contents", [])) == 2  # its objects stay: the manifest and its shard
