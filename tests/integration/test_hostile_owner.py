"""Two batch owners on one endpoint, one of them hostile: the hostile owner's bundles (an evaluation key of 16
bytes, the evaluation key of another circuit, corrupted ciphertexts) are each quarantined with a named reason, not
retried, while the other owner's bundle, in flight on the same endpoint at the same time, is delivered and decrypts
to the clear model's predictions; the endpoint's serving processes never restart because of them.

The endpoint serves a depth-3 decision tree, a circuit with bootstraps: the kind whose native evaluation a key
that does not match it used to crash."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from client.batch_client import BatchClient, ClientSettings
from client.decrypt import decrypt_result
from client.encrypt import encrypt_rows
from client.model import ClientModel
from client.transfer import download_result, submit
from common import aws
from common.bundle.manifest import KeyRef, Manifest, ShardEntry
from common.bundle.schema import MANIFEST_NAME, sha256_hex
from common.bundle.shards import encode_shard, parse_shard
from common.bundle.store import BundleLayout
from common.settings import from_outputs
from containers.training.data import sample_records
from infrastructure import owners
from infrastructure.deployment import up
from local import lifecycle
from local.people import People, acting_as, ensure_people, owner_actor
from pipelines.approval import approve
from pipelines.clear_predictions import clear_classes
from pipelines.endpoint import deploy_endpoint
from pipelines.runs import train_and_register
from tests import limits
from tests.integration.helpers import deployment_for, settle

pytestmark = pytest.mark.integration

DEPLOYMENT = deployment_for("hostile", function_concurrency=2, max_instances=1, invocations_per_instance=2)
# A small tree, levers pinned: the search would only slow the test down.
TREE = {"ModelType": "decision_tree", "MaxDepth": "3", "NBits": "3", "SearchSeconds": "0", "FheSampleSize": "2"}
GOOD, HOSTILE = "clinic-good", "hostile"
SETTLE_TIMEOUT = 600.0


@dataclass(frozen=True)
class Owner:
    name: str
    layout: BundleLayout
    model: ClientModel


@dataclass
class Scene:
    package_arn: str
    endpoint: str
    state_machine_arn: str
    people: People
    owners: dict[str, Owner]
    folder: Path


def _instance_logs(endpoint: str) -> list[Path]:
    return sorted((lifecycle.sagemaker_state_dir() / "endpoints" / endpoint).glob("*/container.log"))


@pytest.fixture(scope="module")
def scene(local_stack: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Scene:
    outputs = up(DEPLOYMENT, report=lambda line: None)  # the administrator: deploy, and add the owners
    for name in (GOOD, HOSTILE):
        owners.add(DEPLOYMENT.prefix, name, report=lambda line: None)
    people = ensure_people(DEPLOYMENT.prefix, outputs)
    settings = from_outputs(outputs, region=aws.region())
    with acting_as(people, "trainer"):
        package_arn = train_and_register(settings.pipeline, parameters=TREE)
    with acting_as(people, "ml-ops"):
        approve(package_arn, settings.pipeline.package_group, "Approved", "hostile owner tests")
        endpoint = deploy_endpoint(settings.endpoint)["endpoint"]
    known = {}
    for name in (GOOD, HOSTILE):
        client = BatchClient(ClientSettings.for_deployment(outputs, name, home=tmp_path_factory.mktemp(name)))
        with acting_as(people, owner_actor(name)):  # each owner fetches, makes and uploads its own keys
            model = client.keys().model
        known[name] = Owner(name, client.layout, model)
    return Scene(package_arn, endpoint, outputs["StateMachineArn"], people, known, tmp_path_factory.mktemp("bundles"))


def _foreign_circuit_key(folder: Path) -> bytes:
    """The evaluation key of another circuit (a logistic regression on four features): well-formed, and made for
    key sets the served tree's circuit does not have."""
    from concrete.ml.deployment import FHEModelClient, FHEModelDev
    from concrete.ml.sklearn import LogisticRegression

    rng = np.random.default_rng(7)
    x = rng.normal(size=(60, 4))
    model = LogisticRegression(n_bits=4).fit(x, (x[:, 0] > 0).astype(int))
    model.compile(x)
    FHEModelDev(str(folder / "dev"), model).save()
    client = FHEModelClient(str(folder / "dev"), key_dir=str(folder / "keys"))
    client.generate_private_and_evaluation_keys()
    key: bytes = client.get_serialized_evaluation_keys()
    return key


def _with_key(folder: Path, manifest: Manifest, layout: BundleLayout, key: bytes) -> None:
    """The bundle in ``folder`` names ``key`` (uploaded to the owner's own keys) as its evaluation key."""
    uri = layout.evaluation_key(sha256_hex(key))
    aws.client("s3").put_object(Bucket=uri.bucket, Key=uri.key, Body=key)
    named = replace(manifest, evaluation_key=KeyRef(sha256_hex(key), str(uri), len(key)))
    (folder / MANIFEST_NAME).write_bytes(named.to_json())


def _corrupted(folder: Path, manifest: Manifest) -> None:
    """Every ciphertext of the bundle in ``folder`` replaced by random bytes of its length; the manifest agrees
    with the shards (sizes and hashes), as an owner who means harm would make it."""
    entries = []
    for entry in manifest.shards:
        ciphertexts = parse_shard((folder / entry.key).read_bytes(), expected_samples=entry.samples, field="shard")
        data = encode_shard([os.urandom(len(c)) for c in ciphertexts])
        (folder / entry.key).write_bytes(data)
        entries.append(ShardEntry(entry.index, entry.key, entry.samples, sha256_hex(data), len(data)))
    (folder / MANIFEST_NAME).write_bytes(replace(manifest, shards=tuple(entries)).to_json())


def _drop_as(scene: Scene, owner: Owner, bundle_id: str, x: npt.NDArray[np.float64], harm: Any = None) -> Manifest:
    folder = scene.folder / owner.name / bundle_id
    manifest = encrypt_rows(owner.model, x, folder, shard_size=4, bundle_id=bundle_id, progress=False)
    with acting_as(scene.people, owner_actor(owner.name)):
        if harm is not None:
            harm(folder, manifest)
        submit(aws.client("s3"), owner.layout, folder, progress=False)
    return manifest


def _boots(endpoint: str) -> dict[Path, int]:
    """How often each of the endpoint's instances started its serving app's worker."""
    return {
        log: len(re.findall(r"Booting worker", log.read_text(errors="replace"))) for log in _instance_logs(endpoint)
    }


def _children(execution_arn: str) -> Iterator[list[dict[str, Any]]]:
    sfn = aws.client("stepfunctions")
    for run in sfn.list_map_runs(executionArn=execution_arn)["mapRuns"]:
        for child in sfn.list_executions(mapRunArn=run["mapRunArn"])["executions"]:
            yield limits.history(sfn, child["executionArn"])


def test_a_hostile_owner_harms_only_its_own_bundles(scene: Scene, tmp_path: Path) -> None:
    good, hostile = scene.owners[GOOD], scene.owners[HOSTILE]
    x = sample_records(40)
    foreign = _foreign_circuit_key(tmp_path)
    harms = {
        "tiny-key": (lambda f, m: _with_key(f, m, hostile.layout, os.urandom(16)), "bad_key"),
        "foreign-key": (lambda f, m: _with_key(f, m, hostile.layout, foreign), "bad_key"),
        "corrupted": (_corrupted, "bad_ciphertext"),
    }
    for index, (bundle_id, (harm, _)) in enumerate(harms.items()):
        _drop_as(scene, hostile, bundle_id, x[index * 4 : index * 4 + 4], harm)
    good_rows = x[12:40]
    _drop_as(scene, good, "in-flight", good_rows)  # 7 shards, served beside the hostile ones

    ended = {
        bundle_id: settle(scene.state_machine_arn, bundle_id, SETTLE_TIMEOUT) for bundle_id in [*harms, "in-flight"]
    }
    delivered = ended.pop("in-flight")
    assert delivered["status"] == "SUCCEEDED", delivered
    with acting_as(scene.people, owner_actor(GOOD)):
        result, shards = download_result(aws.client("s3"), good.layout.result_manifest("in-flight"))
    probabilities = decrypt_result(good.model, result, shards, progress=False)
    predicted = [good.model.preprocessing.classes[i] for i in probabilities.argmax(axis=1)]
    assert predicted == clear_classes(scene.package_arn, good_rows), "100% agreement with the clear model"

    for bundle_id, execution in ended.items():
        assert (execution["status"], execution.get("error")) == ("FAILED", "BundleQuarantined"), (bundle_id, execution)
        uri = hostile.layout.quarantine_reason(bundle_id)
        with acting_as(scene.people, owner_actor(HOSTILE)):  # the owner reads why
            reason = json.loads(aws.client("s3").get_object(Bucket=uri.bucket, Key=uri.key)["Body"].read())
        assert reason["code"] == harms[bundle_id][1], (bundle_id, reason)
        assert reason["field"] and reason["message"], reason
        for child in _children(execution["executionArn"]):
            scheduled = [e for e in child if e["type"] == "TaskScheduled"]
            assert len(scheduled) == 1, f"{bundle_id}: a shard was sent {len(scheduled)} times"
    # In flight at the same time: the good bundle's execution overlaps each hostile one's.
    for bundle_id, execution in ended.items():
        assert delivered["startDate"] < execution["stopDate"] and execution["startDate"] < delivered["stopDate"], (
            bundle_id
        )
    # No serving process restarted: each instance's app booted its worker once, and no evaluator process ended.
    boots = _boots(scene.endpoint)
    assert boots and all(count == 1 for count in boots.values()), f"serving workers restarted: {boots}"
    ends = [line for log in boots for line in log.read_text(errors="replace").splitlines() if "FHE evaluator" in line
            and "ended" in line]  # fmt: skip
    assert not ends, ends
