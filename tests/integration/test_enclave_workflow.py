"""The enclave path end to end on the local stack, IAM enforced: ``fhe-deploy up`` with the enclave image deploys
the key pinned to its measurement, the shard queue and the fleet (minimum 0); the training pipeline registers an
enclave model, approved; an owner encrypts, drops and decrypts with the same client as for FHE; the real workflow
queues the shards, the local fleet scales up from zero as the group's policies would and serves them through
enclaves started from the image the group names; the predictions agree 100% with the clear model. A second owner
cannot have the first's bundle served as his; an image replaced in the artifact bucket (changed by one byte) gets
no key, and its bundle is quarantined as attestation_refused naming its measurement. The audit report, run by the
auditor's role, shows per shard the measurement and model digest that served it, as attested, and checks them
against the key policy and the registry; a document moved to another shard fails the check by name."""

from __future__ import annotations

import base64
import csv
import json
import shutil
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aws_emulators.nitro.measurement import image_sha384

from audit import report as audit_report
from audit.collect import Window
from client.batch_client import BatchClient, ClientSettings
from client.enclave_bundle import _write_bundle, owner_key, public_bytes
from client.errors import BundleQuarantined
from common import aws
from common.attestation import trusted_root
from common.bundle.enclave_crypto import texts_to_bytes
from common.bundle.enclave_manifest import attestation_key
from common.bundle.generation import GenerationSettings
from common.bundle.schema import MANIFEST_NAME
from common.bundle.store import BundleLayout
from common.language_model import pack_folder
from common.model_package import describe, enclave_model_digest
from common.settings import from_outputs
from common.workflow import bundle_executions
from containers.enclave.language_model import load_language_model
from containers.training.data import sample_uci_records
from infrastructure import owners
from infrastructure.deployment import up
from infrastructure.enclave_fleet import EnclaveFleet
from local import lifecycle
from local.people import acting_as, ensure_people
from pipelines.approval import approve
from pipelines.clear_predictions import clear_classes
from pipelines.pretrained import register_pretrained
from pipelines.runs import train_and_register
from tests.integration.helpers import deployment_for, image_changed_by_one_byte
from tests.language_models import CORPUS, tiny_bloom
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
    prefix: str
    pipeline_name: str
    since: datetime
    delivered: list[str] = field(default_factory=list)  # the bundles delivered, for the audit

    def client(self, owner: str) -> BatchClient:
        settings = ClientSettings.for_deployment(self.outputs, owner, home=self.folder / f"{owner}-home")
        return BatchClient(settings, session=self.sessions[owner])

    @property
    def group(self) -> str:
        return self.outputs["EnclaveFleetName"]


@pytest.fixture(scope="module")
def deployed(local_stack: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> EnclaveDeployment:
    folder = tmp_path_factory.mktemp("enclave-workflow")
    since = datetime.now(tz=UTC) - timedelta(seconds=1)
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
    people = ensure_people(deployment.prefix, outputs)  # the last administrator call: the actors' roles from here
    pipeline = from_outputs(outputs, region=aws.region()).pipeline
    parameters = {"ModelKind": "enclave", "ModelType": "xgboost", "NEstimators": "50"}
    with acting_as(people, "trainer"):
        package_arn = train_and_register(pipeline, parameters=parameters)
    with acting_as(people, "ml-ops"):
        approve(package_arn, pipeline.package_group, "Approved", "enclave workflow tests")
    return EnclaveDeployment(
        outputs, package_arn, built.image, built.image_sha384, sessions, folder, deployment.prefix,
        deployment.pipeline_name, since,
    )  # fmt: skip


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


def shard_messages(sfn: Any, state_machine: str, execution: str) -> list[dict[str, Any]]:
    """What each shard message an execution queued for the fleet carried, and what its parent answered: the
    deployed state machine's MessageBody resolved against each Map child execution's input (the local Step
    Functions records no TaskScheduled parameters to read them from), and each child's output. The task token is
    the service's own."""
    definition = json.loads(sfn.describe_state_machine(stateMachineArn=state_machine)["definition"])
    processor = definition["States"]["InferShardsInEnclave"]["ItemProcessor"]
    body = processor["States"][processor["StartAt"]]["Parameters"]["MessageBody"]
    assert sorted(body) == ["bundle.$", "model_package_arn.$", "shard_index.$", "task_token.$"], body
    messages = []
    for map_run in sfn.list_map_runs(executionArn=execution)["mapRuns"]:
        for child in sfn.list_executions(mapRunArn=map_run["mapRunArn"])["executions"]:
            described = sfn.describe_execution(executionArn=child["executionArn"])
            message = json.loads(described["input"])
            messages.append({**message, "answer": json.loads(described.get("output") or "null")})
    return messages


def test_an_owners_enclave_bundle_runs_through_the_workflow_on_a_fleet_scaled_from_zero(
    deployed: EnclaveDeployment,
) -> None:
    d = deployed
    (group,) = aws.client("autoscaling").describe_auto_scaling_groups(AutoScalingGroupNames=[d.group])[
        "AutoScalingGroups"
    ]
    assert group["DesiredCapacity"] == 0  # nothing runs until a shard waits
    source, x = _records(d, "alice", 40)
    data_keys: list[bytes] = []  # the bundle's data key as KMS answered the owner's client, to scan for below

    def keep_data_key(**call: Any) -> None:
        data_keys.append(call["parsed"]["Plaintext"])

    d.sessions["alice"].events.register("after-call.kms.GenerateDataKey", keep_data_key)
    alice = d.client("alice")
    keys = alice.keys()
    assert keys.model.kind == "enclave" and keys.evaluation_key is None
    bundle = alice.encrypt(
        source, d.folder / "alice-bundle", shard_size=10, id_columns=["id"], label_column="diagnosis"
    )
    # The estimate before paying, from the model's measured pace and the fleet's limits (EnclaveFleetSizing).
    assert bundle.estimate is not None and bundle.estimate.path == "enclave", bundle.estimate
    assert (bundle.estimate.samples, bundle.estimate.shards, bundle.estimate.instance_type) == (40, 4, "m5.xlarge")
    with CapacityWatch(d.group) as watch:
        alice.submit(bundle.folder)
        alice.wait(bundle.bundle_id, timeout=SETTLE_TIMEOUT)
    decrypted = alice.decrypt(bundle.bundle_id, d.folder / "alice-predictions.csv")
    d.delivered.append(bundle.bundle_id)
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

    # No record, prediction or data key in any object of the bundle bucket, any shard message the workflow queued
    # (as its executions' histories hold them), nor any log of the fleet (parents and enclaves) or the stack.
    fragments = plaintext_fragments(x, x) + [p.encode() for p in decrypted.predictions.read_text().split() if "." in p]
    (data_key,) = data_keys
    key_forms = [data_key, data_key.hex().encode(), base64.b64encode(data_key)]

    def clean(text: bytes) -> bool:
        return not numbers_in_text(text, fragments) and not any(form in text for form in key_forms)

    s3, bucket = aws.client("s3"), d.outputs["BundleBucketName"]
    for listed in s3.list_objects_v2(Bucket=bucket).get("Contents", []):
        assert clean(s3.get_object(Bucket=bucket, Key=listed["Key"])["Body"].read()), listed["Key"]
    messages = shard_messages(sfn, d.outputs["StateMachineArn"], arn)
    assert sorted(m["shard_index"] for m in messages) == [0, 1, 2, 3], messages
    assert {m["answer"]["image_sha384"] for m in messages} == {d.measurement}, messages
    assert clean(json.dumps(messages).encode())
    logs = [*lifecycle.fleet_state_dir().rglob("*.log"), *lifecycle.stack_dir().glob("*.log")]
    assert any(log.name == "parent.log" for log in logs) and any(log.name == "enclave.log" for log in logs)
    for log in logs:
        assert clean(log.read_bytes()), log


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
    kept = sorted(listed["Key"].rsplit("/", 1)[-1] for listed in inbox.get("Contents", []))
    assert kept == ["00000.records", "estimate.json", "manifest.json"], kept  # its objects stay


PROMPT_SETTINGS = GenerationSettings(max_new_tokens=8, temperature=0.7, top_p=0.9, seed=5, stop=("\n",))


@pytest.fixture(scope="module")
def language_model(deployed: EnclaveDeployment) -> dict[str, Any]:
    """A small Bloom (random weights, a tokenizer trained here) registered by the trainer as a pretrained model
    and approved by ML ops, each under its role."""
    d = deployed
    folder = tiny_bloom(d.folder / "bloom")
    people = ensure_people(d.prefix, d.outputs)
    pipeline = from_outputs(d.outputs, region=aws.region()).pipeline
    with acting_as(people, "trainer"):
        registered = register_pretrained(
            aws.client("sagemaker"), aws.client("s3"), source=str(folder), package_group=pipeline.package_group,
            model_bucket=pipeline.artifact_bucket, image_uri=pipeline.inference_image,
        )  # fmt: skip
    with acting_as(people, "ml-ops"):
        approve(registered["model_package"], pipeline.package_group, "Approved", "enclave workflow tests: text")
    return {**registered, "folder": folder}


def test_fifty_prompts_are_completed_in_the_enclave_as_the_model_does_in_clear_and_only_the_owner_reads_them(
    deployed: EnclaveDeployment, language_model: dict[str, Any]
) -> None:
    d = deployed
    source = d.folder / "notes.csv"
    prompts = [f"{CORPUS[i % len(CORPUS)].split(' and ')[0]} {i}" for i in range(50)]
    with source.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["note_id", "text"])
        writer.writerows([f"n-{i:03d}", prompt] for i, prompt in enumerate(prompts))
    alice = d.client("alice")
    keys = alice.keys(language_model["model_package"])
    assert keys.model.takes_text
    bundle = alice.encrypt(
        source, d.folder / "notes-bundle", shard_size=20, package_arn=keys.model_package, id_columns=["note_id"],
        text_column="text", generation=PROMPT_SETTINGS,
    )  # fmt: skip
    assert [shard.samples for shard in bundle.manifest.shards] == [20, 20, 10]
    # Estimated before paying, from the pace the registration measured and the fleet's limits.
    assert bundle.estimate is not None and (bundle.estimate.path, bundle.estimate.samples) == ("enclave", 50)
    alice.submit(bundle.folder)
    alice.wait(bundle.bundle_id, timeout=SETTLE_TIMEOUT)
    decrypted = alice.decrypt(bundle.bundle_id, d.folder / "completions.csv")
    d.delivered.append(bundle.bundle_id)
    clear = load_language_model(pack_folder(language_model["folder"])).complete(prompts, PROMPT_SETTINGS)
    assert list(decrypted.completions) == clear  # identical to the model run in clear, same seed and settings
    with decrypted.predictions.open(newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["note_id", "row", "completion"] and [r[0] for r in rows[1:]] == [f"n-{i:03d}" for i in range(50)]

    # No prompt or completion text in any object, shard message or log (parents', enclaves', the stack's).
    texts = [p.encode() for p in prompts] + [c.encode() for c in clear if len(c.strip()) >= 6]
    s3, bucket = aws.client("s3"), d.outputs["BundleBucketName"]
    for listed in s3.list_objects_v2(Bucket=bucket).get("Contents", []):
        body = s3.get_object(Bucket=bucket, Key=listed["Key"])["Body"].read()
        assert not any(text in body for text in texts), listed["Key"]
    sfn = aws.client("stepfunctions")
    (arn,) = bundle_executions(sfn, d.outputs["StateMachineArn"], bundle.bundle_id, "alice")
    messages = json.dumps(shard_messages(sfn, d.outputs["StateMachineArn"], arn)).encode()
    assert b"shard_index" in messages and not any(text in messages for text in texts)
    for log in [*lifecycle.fleet_state_dir().rglob("*.log"), *lifecycle.stack_dir().glob("*.log")]:
        assert not any(text in log.read_bytes() for text in texts), log


def _hostile_text_bundle(
    d: EnclaveDeployment, name: str, prompts: list[str], generation: dict[str, Any] | None = None
) -> tuple[str, Path]:
    """A text bundle as a hostile client writes one: its prompts unchecked, and its manifest's settings replaced
    by ``generation`` after encryption; its bundle id and folder."""
    alice = d.client("alice")
    model = alice.model(None)
    folder, bundle_id = d.folder / name, f"{name}-0001"
    _write_bundle(
        aws.client("kms", d.sessions["alice"]), key_arn=d.outputs["EnclaveKeyArn"], owner="alice", model=model.ref,
        versions=model.versions.to_dict(), chunks=[(texts_to_bytes(prompts), len(prompts))],
        owner_public_key=public_bytes(owner_key(d.folder / "alice-home")), destination=folder, bundle_id=bundle_id,
        generation=PROMPT_SETTINGS, progress=False,
    )  # fmt: skip
    if generation is not None:
        written = json.loads((folder / MANIFEST_NAME).read_bytes())
        written["generation"] = generation
        (folder / MANIFEST_NAME).write_text(json.dumps(written))
    return bundle_id, folder


def _quarantined(d: EnclaveDeployment, bundle_id: str, folder: Path) -> dict[str, Any]:
    """Drop the bundle as a hostile client would (its shard, then its manifest, straight to S3 under the owner's
    role: no client-side check) and wait for its quarantine record."""
    alice = d.client("alice")
    s3, prefix = aws.client("s3", d.sessions["alice"]), alice.layout.request_prefix(bundle_id)
    for name in ("shards/00000.records", MANIFEST_NAME):
        target = prefix.join(name)
        s3.put_object(Bucket=target.bucket, Key=target.key, Body=(folder / name).read_bytes())
    with pytest.raises(BundleQuarantined) as quarantined:
        alice.wait(bundle_id, timeout=SETTLE_TIMEOUT)
    layout = BundleLayout(d.outputs["BundleBucketName"], "alice")
    inbox = aws.client("s3").list_objects_v2(Bucket=layout.bucket, Prefix=layout.request_prefix(bundle_id).key + "/")
    kept = sorted(listed["Key"].rsplit("/", 1)[-1] for listed in inbox.get("Contents", []))
    assert kept == ["00000.records", "manifest.json"], kept  # nothing of the bundle is lost
    return dict(quarantined.value.reason)


@pytest.mark.parametrize(
    ("generation", "field", "code"),
    [
        ({**PROMPT_SETTINGS.to_dict(), "max_new_tokens": 100_000}, "generation.max_new_tokens", "out_of_range"),
        ({**PROMPT_SETTINGS.to_dict(), "temperature": -1}, "generation.temperature", "out_of_range"),
    ],
    ids=["too-many-new-tokens", "a-negative-temperature"],
)
def test_a_manifest_with_out_of_range_generation_settings_is_quarantined_naming_the_field(
    deployed: EnclaveDeployment, language_model: dict[str, Any], generation: dict[str, Any], field: str, code: str
) -> None:
    deployed.client("alice").keys(language_model["model_package"])
    bundle_id, folder = _hostile_text_bundle(deployed, f"settings-{field.rsplit('.', 1)[-1]}", ["a note"], generation)
    reason = _quarantined(deployed, bundle_id, folder)
    assert (reason["field"], reason["code"]) == (field, code), reason


@pytest.mark.parametrize(
    ("prompts", "code"),
    [
        (["a note", "   "], "empty_prompt"),
        (["a note", " ".join(["the patient reports mild pain"] * 400)], "prompt_too_long"),
    ],
    ids=["an-empty-prompt", "a-prompt-over-the-token-limit"],
)
def test_a_prompt_the_model_will_not_complete_quarantines_its_bundle_by_name(
    deployed: EnclaveDeployment, language_model: dict[str, Any], prompts: list[str], code: str
) -> None:
    deployed.client("alice").keys(language_model["model_package"])
    bundle_id, folder = _hostile_text_bundle(deployed, code.replace("_", "-"), prompts)
    reason = _quarantined(deployed, bundle_id, folder)
    assert reason["code"] == code and "[1]" in str(reason["message"]), reason
    assert "the patient" not in str(reason["message"])  # the prompt's index, never its text


def test_the_audit_shows_what_served_each_enclave_shard_as_attested_and_checks_it(
    deployed: EnclaveDeployment, tmp_path: Path
) -> None:
    d = deployed
    assert d.delivered, "runs after the end-to-end test, whose bundle it audits"
    people = ensure_people(d.prefix, d.outputs)
    root = trusted_root(lifecycle.attestation_authority().root_path)

    def audit(out: Path) -> dict[str, Any]:
        with acting_as(people, "auditor"):
            window = Window(d.since, datetime.now(tz=UTC) + timedelta(seconds=1))
            return audit_report.run(
                window, out, deployment=d.prefix, pipeline_name=d.pipeline_name, settle=60.0, attestation_root=root
            )

    report = audit(tmp_path / "report")
    assert report["ok"], [c for c in report["checks"] if not c["ok"]]
    by_id = {b["bundle_id"]: b for b in report["bundles"]}
    bundle = by_id[d.delivered[0]]  # the tabular bundle of the end-to-end test
    assert bundle["path"] == "enclave" and bundle["outcome"] == "delivered"
    assert [s["shard"] for s in bundle["served_by"]] == [0, 1, 2, 3]
    digest = enclave_model_digest(describe(aws.client("sagemaker"), d.package_arn))
    for shard in bundle["served_by"]:
        assert (shard["image_sha384"], shard["model_digest"], shard["problem"]) == (d.measurement, digest, None)
    assert report["enclave_key_policy"]["measurements"] == [d.measurement]
    assert report["enclave_key_policy"]["unattested"] == []
    html = Path(report["files"]["html"]).read_text()
    assert d.measurement in html and digest in html
    # The text bundle: served by the same measurement and the language model's digest, its settings recorded.
    for text_bundle in (by_id[bundle_id] for bundle_id in d.delivered[1:]):
        lm_digest = enclave_model_digest(describe(aws.client("sagemaker"), str(text_bundle["model_package_arn"])))
        assert [(s["image_sha384"], s["model_digest"], s["problem"]) for s in text_bundle["served_by"]] == [
            (d.measurement, lm_digest, None)
        ] * 3
        assert text_bundle["generation"] == PROMPT_SETTINGS.to_dict()

    # Shard 0's document shown as shard 1's proof: the document is genuine, but made for another shard.
    s3, layout = aws.client("s3"), BundleLayout(d.outputs["BundleBucketName"], "alice")
    prefix = layout.result_prefix(bundle["bundle_id"])
    first, second = prefix.join(attestation_key(0)), prefix.join(attestation_key(1))
    kept = s3.get_object(Bucket=second.bucket, Key=second.key)["Body"].read()
    s3.copy_object(Bucket=second.bucket, Key=second.key, CopySource={"Bucket": first.bucket, "Key": first.key})
    try:
        moved = audit(tmp_path / "moved")
    finally:
        s3.put_object(Bucket=second.bucket, Key=second.key, Body=kept)
    (check,) = [c for c in moved["checks"] if c["name"] == "enclave_served_as_attested"]
    assert check["failures"] == [
        f"bundle alice/{bundle['bundle_id']}, shard 1: its attestation document was made for another shard"
    ]
