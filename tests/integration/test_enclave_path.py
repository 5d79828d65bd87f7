"""The enclave path's cryptography on the local stack (IAM enforced, KMS's ``Recipient`` as AWS applies it): an
enclave started from the image a key policy pins gets the data key an owner made, opened inside the enclave only,
and serves a shard whose predictions only the owner opens, equal to the model's in clear; an enclave from the image
changed by one byte is refused; the owner's role may make data keys and never decrypt; one owner's data key does
not open for another owner's bundle."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import sys
import tarfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xgboost
from aws_emulators.nitro.measurement import image_sha384
from aws_emulators.nitro.nsm import NsmServer, nsm_for_image
from aws_emulators.nitro.runner import EnclaveRunner
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives.asymmetric import x25519
from sklearn.datasets import load_breast_cancer

from client.enclave_bundle import encrypt_enclave_bundle, open_enclave_result, owner_key, public_bytes
from common import artifacts, aws, stacks
from common.bundle.binding import ShardBinding
from common.bundle.enclave_crypto import (
    encrypt_records,
    open_results,
    records_from_bytes,
    records_to_bytes,
    texts_from_bytes,
    texts_to_bytes,
)
from common.bundle.enclave_manifest import (
    parse_enclave_manifest,
    result_manifest,
    sealed_entries,
    sealed_results_key,
)
from common.bundle.generation import GenerationSettings
from common.bundle.manifest import package_ref
from common.bundle.schema import MANIFEST_NAME, sha256_hex
from common.enclave_model import CAUSAL_LM, XGBOOST_JSON, EnclaveModelRecord
from common.language_model import pack_folder
from common.versions import VersionsRecord
from containers.enclave.application import EnclaveApplication, ShardRefused, ShardWork
from containers.enclave.image import build_image
from containers.enclave.key_release import KeyRelease
from containers.enclave.language_model import load_language_model
from containers.enclave.models import load_model
from containers.enclave.nsm import Nsm, SocketTransport
from containers.enclave.parent import EnclaveConnection
from containers.enclave.worker import ServedModel, ShardWorker, poll
from infrastructure import templates
from local import lifecycle
from tests.integration.helpers import image_changed_by_one_byte
from tests.language_models import tiny_bloom
from tests.leaks import numbers_in_text, plaintext_fragments

pytestmark = pytest.mark.integration

ENCLAVE_ROLE, OWNER_ROLE = "test-enclave-instance", "test-enclave-owner"
ALICE = ShardBinding(owner="alice", bundle_id="b-0001", shard=0)
CONTEXT = ALICE.encryption_context()


def _role(name: str, actions: list[str]) -> str:
    iam = aws.client("iam")
    account = aws.client("sts").get_caller_identity()["Account"]
    trust = {"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{account}:root"}, "Action": "sts:AssumeRole"}
    arn = str(
        iam.create_role(
            RoleName=name, AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [trust]})
        )["Role"]["Arn"]
    )
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}]}
    iam.put_role_policy(RoleName=name, PolicyName="kms", PolicyDocument=json.dumps(policy))
    return arn


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The enclave image built from the sources, and one built from sources changed by one byte."""
    folder = tmp_path_factory.mktemp("enclave-images")
    return build_image(folder / "measured.pyz"), image_changed_by_one_byte(folder, folder / "changed.pyz")


@pytest.fixture(scope="module")
def key(local_stack: dict[str, str], images: tuple[Path, Path]) -> dict[str, Any]:
    enclave_role, owner_role = _role(ENCLAVE_ROLE, ["kms:Decrypt"]), _role(OWNER_ROLE, ["kms:*"])
    account = enclave_role.split(":")[4]
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"AWS": f"arn:aws:iam::{account}:root"},
                "Action": ["kms:Describe*", "kms:Get*", "kms:Put*", "kms:List*"],
                "Resource": "*",
            },
            {"Effect": "Allow", "Principal": {"AWS": owner_role}, "Action": "kms:GenerateDataKey", "Resource": "*"},
            {
                "Effect": "Allow",
                "Principal": {"AWS": enclave_role},
                "Action": "kms:Decrypt",
                "Resource": "*",
                "Condition": {
                    "StringEqualsIgnoreCase": {"kms:RecipientAttestation:ImageSha384": image_sha384(images[0])}
                },
            },
        ],
    }
    key_id = aws.client("kms").create_key(Policy=json.dumps(policy))["KeyMetadata"]["KeyId"]
    owner = aws.role_session(owner_role, "owner")
    made = aws.client("kms", owner).generate_data_key(KeyId=key_id, KeySpec="AES_256", EncryptionContext=CONTEXT)
    return {"made": made, "enclave": aws.role_session(enclave_role, "enclave"), "owner": owner}


@pytest.fixture
def nsm_for(tmp_path: Path) -> Iterator[Any]:
    servers: list[NsmServer] = []

    def start(image: Path) -> Nsm:
        path = tmp_path / f"nsm-{len(servers)}.sock"
        servers.append(NsmServer(path, nsm_for_image(image, lifecycle.attestation_authority())))
        servers[-1].start()
        return Nsm(SocketTransport(path))

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_the_measured_enclave_gets_the_owners_data_key(
    key: dict[str, Any], images: tuple[Path, Path], nsm_for: Any
) -> None:
    release = KeyRelease(aws.client("kms", key["enclave"]), nsm_for(images[0]))
    released = release.data_key(key["made"]["CiphertextBlob"], encryption_context=CONTEXT, model_digest=b"m" * 32)
    assert released.data_key == key["made"]["Plaintext"]


@pytest.mark.parametrize(
    ("role", "image"),
    [("enclave", 1), ("owner", 0)],
    ids=["an-image-changed-by-one-byte", "the-owners-role-with-a-genuine-document"],
)
def test_the_key_is_refused_to_another_measurement_and_to_the_owners_role(
    key: dict[str, Any], images: tuple[Path, Path], nsm_for: Any, role: str, image: int
) -> None:
    release = KeyRelease(aws.client("kms", key[role]), nsm_for(images[image]))
    with pytest.raises(ClientError) as refused:
        release.data_key(key["made"]["CiphertextBlob"], encryption_context=CONTEXT, model_digest=b"m" * 32)
    assert refused.value.response["Error"]["Code"] == "AccessDeniedException"


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, Any]:
    """A boosted model saved as XGBoost JSON, and records of its features."""
    features, labels = load_breast_cancer(return_X_y=True)
    trained = xgboost.XGBClassifier(n_estimators=20, max_depth=3).fit(features[:400], labels[:400])
    path = tmp_path_factory.mktemp("model") / "model.json"
    trained.get_booster().save_model(path)
    return path.read_bytes(), features[400:460]


def _work(key: dict[str, Any], records: Any, served_as: ShardBinding, owner: x25519.X25519PrivateKey) -> ShardWork:
    """Alice's shard (her data key, her records), served as ``served_as`` with ``owner``'s public key."""
    return ShardWork(
        binding=served_as,
        encrypted_data_key=key["made"]["CiphertextBlob"],
        encrypted_records=encrypt_records(key["made"]["Plaintext"], records_to_bytes(records), ALICE),
        owner_public_key=owner.public_key().public_bytes_raw(),
    )


def _enclave(key: dict[str, Any], model_bytes: bytes, nsm: Nsm) -> EnclaveApplication:
    return EnclaveApplication(load_model(XGBOOST_JSON, model_bytes), KeyRelease(aws.client("kms", key["enclave"]), nsm))


def test_a_shard_is_served_and_only_its_owner_opens_predictions_equal_to_the_clear_models(
    key: dict[str, Any], images: tuple[Path, Path], nsm_for: Any, model: tuple[bytes, Any]
) -> None:
    model_bytes, records = model
    owner_key = x25519.X25519PrivateKey.generate()
    answer = _enclave(key, model_bytes, nsm_for(images[0])).run(_work(key, records, ALICE, owner_key))
    assert answer.samples == len(records)
    predictions = records_from_bytes(open_results(owner_key, answer.sealed_results, ALICE), "results", max_values=10**6)
    clear = xgboost.Booster(model_file=bytearray(model_bytes)).predict(xgboost.DMatrix(records))
    assert np.array_equal(predictions, clear.astype(np.float64))
    with pytest.raises(ValueError, match="does not open"):
        open_results(x25519.X25519PrivateKey.generate(), answer.sealed_results, ALICE)


def test_another_owners_bundle_cannot_use_this_owners_data_key(
    key: dict[str, Any], images: tuple[Path, Path], nsm_for: Any, model: tuple[bytes, Any]
) -> None:
    """Bob copies Alice's encrypted key and records into a bundle of his own, with his public key: the enclave takes
    the owner from where the bundle lies, KMS refuses the key under Bob's context, and nothing is sealed to Bob."""
    model_bytes, records = model
    bob = ShardBinding(owner="bob", bundle_id=ALICE.bundle_id, shard=0)
    with pytest.raises(ShardRefused) as refused:
        _enclave(key, model_bytes, nsm_for(images[0])).run(_work(key, records, bob, x25519.X25519PrivateKey.generate()))
    assert refused.value.reason == "key_refused"


def test_the_application_names_an_enclave_of_another_measurement_as_attestation_refused(
    key: dict[str, Any], images: tuple[Path, Path], nsm_for: Any, model: tuple[bytes, Any]
) -> None:
    model_bytes, records = model
    with pytest.raises(ShardRefused) as refused:
        _enclave(key, model_bytes, nsm_for(images[1])).run(
            _work(key, records, ALICE, x25519.X25519PrivateKey.generate())
        )
    assert refused.value.reason == "attestation_refused"


@pytest.fixture
def running_enclave(images: tuple[Path, Path], tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Any]:
    """Start an enclave from one of the images as its own process, as the local fleet will: measured by the
    runner, its NSM a socket, its only way out the channel and KMS's endpoint (no credentials of its own)."""
    runners: list[EnclaveRunner] = []

    def start(image: Path) -> tuple[EnclaveRunner, EnclaveConnection]:
        runner = EnclaveRunner(image, tmp_path / f"enclave-{len(runners)}", lifecycle.attestation_authority())
        runners.append(runner)
        listening = runner.folder / "enclave.sock"
        environment = {name: os.environ[name] for name in ("AWS_ENDPOINT_URL", "AWS_CA_BUNDLE", "AWS_REGION", "PATH")}
        environment["FHE_NSM"] = f"unix:{runner.nsm_socket}"
        runner.start([sys.executable, str(image), "--listen", f"unix:{listening}"], environment, ready=listening)
        return runner, EnclaveConnection(f"unix:{listening}")

    yield start
    for runner in runners:
        runner.stop()


def test_the_enclave_process_from_the_measured_image_serves_a_shard_through_its_parent(
    key: dict[str, Any], images: tuple[Path, Path], model: tuple[bytes, Any], running_enclave: Any
) -> None:
    model_bytes, records = model
    runner, parent = running_enclave(images[0])
    assert parent.load_model(XGBOOST_JSON, model_bytes) == load_model(XGBOOST_JSON, model_bytes).digest
    owner_key = x25519.X25519PrivateKey.generate()
    answer = parent.serve_shard(_work(key, records, ALICE, owner_key), session=key["enclave"])
    predictions = records_from_bytes(open_results(owner_key, answer.sealed_results, ALICE), "results", max_values=10**6)
    clear = xgboost.Booster(model_file=bytearray(model_bytes)).predict(xgboost.DMatrix(records))
    assert np.array_equal(predictions, clear.astype(np.float64))
    log = runner.log.read_text()
    assert f"running {images[0]}" in log  # the code that ran is the image's
    fragments = plaintext_fragments(records, records) + plaintext_fragments(predictions, predictions)
    assert not numbers_in_text(log.encode(), fragments)


def test_an_enclave_process_from_the_image_changed_by_one_byte_is_refused_its_key(
    key: dict[str, Any], images: tuple[Path, Path], model: tuple[bytes, Any], running_enclave: Any
) -> None:
    model_bytes, records = model
    runner, parent = running_enclave(images[1])
    parent.load_model(XGBOOST_JSON, model_bytes)
    with pytest.raises(ShardRefused) as refused:
        parent.serve_shard(_work(key, records, ALICE, x25519.X25519PrivateKey.generate()), session=key["enclave"])
    assert refused.value.reason == "attestation_refused"
    assert runner.image_sha384 != image_sha384(images[0])


# ------------------------------------------------------------------------------- the deployment's enclave key stack

PREFIX = "encl"


BUCKET = "encl-bundles"


@pytest.fixture(scope="module")
def enclave_stack(local_stack: dict[str, str], images: tuple[Path, Path]) -> dict[str, str]:
    """``infrastructure/enclave.yaml`` deployed with the measured image's measurement, as the runner reports it."""
    ec2 = aws.client("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.80.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.80.1.0/24")["Subnet"]["SubnetId"]
    aws.client("s3").create_bucket(Bucket=BUCKET)
    given = {
        "Prefix": PREFIX,
        "EnclaveImageSha384": image_sha384(images[0]),
        "ParentWheelKey": "enclave/fhe_batch_inference-0.1.0-py3-none-any.whl",
        "BundleBucketName": BUCKET,
        "ArtifactBucketName": BUCKET,
        "ModelBucketName": BUCKET,
        "ModelPackageGroupName": package_ref(PACKAGE).package_group,
        "KeyArn": aws.client("kms").create_key(Description="the deployment's bucket key")["KeyMetadata"]["Arn"],
        "ImageId": "ami-0123456789abcdef0",
        "SubnetIds": subnet,
    }
    return stacks.apply(f"{PREFIX}-enclave", templates.body(templates.ENCLAVE), given, timeout=120, report=print)


def _owner_session(name: str, enclave_key_arn: str) -> Any:
    """A batch owner's role as ``infrastructure/owner.yaml`` makes it (its bucket and model names unused here)."""
    given = {
        "Prefix": PREFIX,
        "Owner": name,
        "KeyArn": enclave_key_arn,  # its own policy then allows Decrypt on the key: the key policy still refuses
        "ModelBucketName": "unused",
        "BundleBucketName": BUCKET,
        "ModelPackageGroup": "unused",
        "EndpointName": "unused",
        "EnclaveKeyArn": enclave_key_arn,
    }
    outputs = stacks.apply(f"{PREFIX}-owner-{name}", templates.body(templates.OWNER), given, timeout=120, report=print)
    return aws.role_session(outputs["OwnerRoleArn"], name)


def test_the_key_policy_pins_the_deployments_measurement_output(enclave_stack: dict[str, str]) -> None:
    policy = json.loads(aws.client("kms").get_key_policy(KeyId=enclave_stack["EnclaveKeyArn"])["Policy"])
    decrypting = [statement for statement in policy["Statement"] if "kms:Decrypt" in str(statement["Action"])]
    assert decrypting and all(
        statement["Condition"]["StringEqualsIgnoreCase"]["kms:RecipientAttestation:ImageSha384"]
        == enclave_stack["EnclaveImageSha384"]
        for statement in decrypting
    )


def _serve_bundle(parent: EnclaveConnection, folder: Path, owner: str, session: Any) -> tuple[bytes, dict[int, bytes]]:
    """The parent's part for one bundle lying under ``owner``'s folder: each shard through the enclave, then the
    result manifest."""
    request_bytes = (folder / MANIFEST_NAME).read_bytes()
    request = parse_enclave_manifest(request_bytes)
    sealed = {}
    for shard in request.shards:
        work = ShardWork(
            binding=ShardBinding(owner, request.bundle_id, shard.index),
            encrypted_data_key=request.enclave.data_key,
            encrypted_records=(folder / shard.key).read_bytes(),
            owner_public_key=request.enclave.owner_public_key,
        )
        sealed[shard.index] = parent.serve_shard(work, session=session).sealed_results
    return result_manifest(request, sha256_hex(request_bytes), sealed_entries(request, sealed)).to_json(), sealed


def test_owners_make_data_keys_for_themselves_and_only_the_measured_enclave_opens_them(
    enclave_stack: dict[str, str],
    images: tuple[Path, Path],
    model: tuple[bytes, Any],
    running_enclave: Any,
    tmp_path: Path,
) -> None:
    alice = _owner_session("alice", enclave_stack["EnclaveKeyArn"])
    bob = _owner_session("bob", enclave_stack["EnclaveKeyArn"])
    model_bytes, records = model
    home = tmp_path / "alice-home"
    request = encrypt_enclave_bundle(
        aws.client("kms", alice),
        key_arn=enclave_stack["EnclaveKeyArn"],
        owner="alice",
        model=package_ref("arn:aws:sagemaker:us-east-1:000000000000:model-package/enclave-model/1"),
        versions=VersionsRecord.current().to_dict(),
        rows=records,
        owner_public_key=public_bytes(owner_key(home)),
        destination=tmp_path / "bundle",
        bundle_id="b-0001",
        shard_size=25,
        progress=False,
    )
    owner_kms = aws.client("kms", alice)
    with pytest.raises(ClientError) as refused:  # a key bound to another owner
        owner_kms.generate_data_key(
            KeyId=enclave_stack["EnclaveKeyArn"], KeySpec="AES_256", EncryptionContext={"owner": "bob", "bundle": "b"}
        )
    assert refused.value.response["Error"]["Code"] == "AccessDeniedException"
    context = {"owner": "alice", "bundle": request.bundle_id}
    with pytest.raises(ClientError) as refused:  # an owner never decrypts
        owner_kms.decrypt(CiphertextBlob=request.enclave.data_key, EncryptionContext=context)
    assert refused.value.response["Error"]["Code"] == "AccessDeniedException"
    instance = aws.role_session(enclave_stack["EnclaveInstanceRoleArn"], "enclave-instance")
    with pytest.raises(ClientError) as refused:  # the instances' role itself, without the enclave's Recipient
        aws.client("kms", instance).decrypt(CiphertextBlob=request.enclave.data_key, EncryptionContext=context)
    assert refused.value.response["Error"]["Code"] == "AccessDeniedException"

    _, parent = running_enclave(images[0])
    parent.load_model(XGBOOST_JSON, model_bytes)
    result, sealed = _serve_bundle(parent, tmp_path / "bundle", "alice", instance)
    predictions = open_enclave_result(
        owner_key(home), "alice", (tmp_path / "bundle" / MANIFEST_NAME).read_bytes(), result, sealed
    )
    clear = xgboost.Booster(model_file=bytearray(model_bytes)).predict(xgboost.DMatrix(records))
    assert len(request.shards) == 3 and np.array_equal(predictions, clear.astype(np.float64))

    # Bob copies Alice's bundle into his own folder with his own public key: served as his, the key is refused.
    bob_bundle = tmp_path / "bob-bundle"
    shutil.copytree(tmp_path / "bundle", bob_bundle)
    copied = json.loads((bob_bundle / MANIFEST_NAME).read_bytes())
    copied["enclave"]["owner_public_key"] = base64.b64encode(public_bytes(owner_key(tmp_path / "bob-home"))).decode()
    (bob_bundle / MANIFEST_NAME).write_text(json.dumps(copied))
    with pytest.raises(ShardRefused) as served:
        _serve_bundle(parent, bob_bundle, "bob", instance)
    assert served.value.reason == "key_refused"
    with pytest.raises(ClientError) as refused:  # nor can Bob make a key in Alice's name
        aws.client("kms", bob).generate_data_key(
            KeyId=enclave_stack["EnclaveKeyArn"], KeySpec="AES_256", EncryptionContext=context
        )
    assert refused.value.response["Error"]["Code"] == "AccessDeniedException"


# ------------------------------------------------------------------------- the parent serving the workflow's shards

PACKAGE = "arn:aws:sagemaker:us-east-1:000000000000:model-package/enclave-model/1"


def _shard_machine(queue_url: str) -> str:
    """A state machine whose one Map queues each shard for the fleet and waits on its task token, as the workflow's
    enclave route does."""
    iam = aws.client("iam")
    trust = {"Effect": "Allow", "Principal": {"Service": "states.amazonaws.com"}, "Action": "sts:AssumeRole"}
    role = iam.create_role(
        RoleName=f"{PREFIX}-shard-machine",
        AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [trust]}),
    )["Role"]["Arn"]
    send = {"Effect": "Allow", "Action": "sqs:SendMessage", "Resource": "*"}
    iam.put_role_policy(
        RoleName=f"{PREFIX}-shard-machine",
        PolicyName="send",
        PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [send]}),
    )
    wait = {
        "Type": "Task",
        "Resource": "arn:aws:states:::sqs:sendMessage.waitForTaskToken",
        "Parameters": {
            "QueueUrl": queue_url,
            "MessageBody": {
                "bundle.$": "$.bundle",
                "model_package_arn.$": "$.model_package_arn",
                "shard_index.$": "$.shard_index",
                "task_token.$": "$$.Task.Token",
            },
        },
        "TimeoutSeconds": 300,
        "End": True,
    }
    definition = {
        "StartAt": "Shards",
        "States": {
            "Shards": {
                "Type": "Map",
                "ItemsPath": "$.shards",
                "ItemSelector": {
                    "bundle.$": "$.bundle",
                    "model_package_arn.$": "$.model_package_arn",
                    "shard_index.$": "$$.Map.Item.Value",
                },
                "ItemProcessor": {"StartAt": "Serve", "States": {"Serve": wait}},
                "End": True,
            }
        },
    }
    return str(
        aws.client("stepfunctions").create_state_machine(
            name=f"{PREFIX}-shards", definition=json.dumps(definition), roleArn=role
        )["stateMachineArn"]
    )


@pytest.fixture(scope="module")
def shard_machine(enclave_stack: dict[str, str]) -> str:
    return _shard_machine(enclave_stack["EnclaveShardQueueUrl"])


def _drop(enclave_stack: dict[str, str], records: Any, bundle_id: str, home: Path, folder: Path) -> dict[str, str]:
    """Alice's bundle, written by the client under her role and dropped in her inbox; its BundleRef."""
    alice = _owner_session("alice", enclave_stack["EnclaveKeyArn"])
    manifest = encrypt_enclave_bundle(
        aws.client("kms", alice),
        key_arn=enclave_stack["EnclaveKeyArn"],
        owner="alice",
        model=package_ref(PACKAGE),
        versions=VersionsRecord.current().to_dict(),
        rows=records,
        owner_public_key=public_bytes(owner_key(home)),
        destination=folder,
        bundle_id=bundle_id,
        shard_size=25,
        progress=False,
    )
    s3 = aws.client("s3", alice)
    for shard in manifest.shards:
        s3.put_object(Bucket=BUCKET, Key=f"inbox/alice/{bundle_id}/{shard.key}", Body=(folder / shard.key).read_bytes())
    key = f"inbox/alice/{bundle_id}/{MANIFEST_NAME}"
    etag = s3.put_object(Bucket=BUCKET, Key=key, Body=(folder / MANIFEST_NAME).read_bytes())["ETag"]
    return {"bucket": BUCKET, "bundle_id": bundle_id, "manifest_key": key, "etag": etag}


def _run_fleet_until_done(
    execution: str, worker: ShardWorker, queue_url: str, session: Any, timeout: float = 120.0
) -> dict[str, Any]:
    sfn, sqs = aws.client("stepfunctions"), aws.client("sqs", session)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        described = sfn.describe_execution(executionArn=execution)
        if described["status"] != "RUNNING":
            return dict(described)
        poll(sqs, queue_url, worker, wait_seconds=1)
    raise AssertionError(f"{execution} still running after {timeout:.0f} s")


@pytest.fixture(scope="module")
def registered_model(
    enclave_stack: dict[str, str], model: tuple[bytes, Any], tmp_path_factory: pytest.TempPathFactory
) -> str:
    """PACKAGE registered as the training pipeline registers an enclave model (model_kind, model_digest, its
    model.tar.gz in the model bucket) and Approved; its digest."""
    model_bytes, _ = model
    folder = tmp_path_factory.mktemp("registered")
    record = EnclaveModelRecord.of(XGBOOST_JSON, model_bytes, 30, "xgboost")
    record.save(folder, model_bytes)
    with tarfile.open(folder / "model.tar.gz", "w:gz") as tar:
        for name in (record.file, artifacts.ENCLAVE_MODEL_JSON):
            tar.add(folder / name, arcname=name)
    key = "pipelines/run-1/model/model.tar.gz"
    aws.client("s3").upload_file(str(folder / "model.tar.gz"), BUCKET, key)
    sagemaker = aws.client("sagemaker")
    sagemaker.create_model_package_group(ModelPackageGroupName=package_ref(PACKAGE).package_group)
    created = sagemaker.create_model_package(
        ModelPackageGroupName=package_ref(PACKAGE).package_group,
        InferenceSpecification={
            "Containers": [
                {"Image": "000000000000.dkr.ecr.us-east-1.amazonaws.com/unused", "ModelDataUrl": f"s3://{BUCKET}/{key}"}
            ],
            "SupportedContentTypes": ["application/json"],
            "SupportedResponseMIMETypes": ["application/octet-stream"],
        },
        CustomerMetadataProperties={
            artifacts.MODEL_KIND_PROPERTY: "enclave",
            artifacts.MODEL_DIGEST_PROPERTY: record.sha256,
        },
        ModelApprovalStatus="Approved",
    )
    assert created["ModelPackageArn"] == PACKAGE
    return record.sha256


def _worker(
    enclave_stack: dict[str, str], parent: EnclaveConnection, image: Path, instance: Any, *, loads_model: bool = False
) -> ShardWorker:
    """The parent's worker under the instance role; with ``loads_model``, it loads each shard's package's model
    into its enclave from the registry, as the fleet's does."""
    s3 = aws.client("s3", instance)
    return ShardWorker(
        s3,
        aws.client("stepfunctions", instance),
        parent,
        model=ServedModel(aws.client("sagemaker", instance), s3, parent) if loads_model else None,
        image_sha384=image_sha384(image),
        lend=lambda: instance,
    )


def test_the_parent_serves_the_workflows_shards_and_the_owner_opens_the_result(
    enclave_stack: dict[str, str],
    shard_machine: str,
    images: tuple[Path, Path],
    model: tuple[bytes, Any],
    registered_model: str,
    running_enclave: Any,
    tmp_path: Path,
) -> None:
    """The parent, under the instance role, loads the registered package's model into its enclave from the
    registry (approval, kind, digest) and the model bucket, then serves the shards."""
    model_bytes, records = model
    bundle = _drop(enclave_stack, records, "b-0002", tmp_path / "home", tmp_path / "bundle")
    instance = aws.role_session(enclave_stack["EnclaveInstanceRoleArn"], "enclave-instance")
    runner, parent = running_enclave(images[0])
    digest = registered_model
    started = aws.client("stepfunctions").start_execution(
        stateMachineArn=shard_machine,
        input=json.dumps({"bundle": bundle, "model_package_arn": PACKAGE, "shards": [0, 1, 2]}),
    )
    ended = _run_fleet_until_done(
        started["executionArn"],
        _worker(enclave_stack, parent, images[0], instance, loads_model=True),
        enclave_stack["EnclaveShardQueueUrl"],
        instance,
    )
    assert ended["status"] == "SUCCEEDED", ended.get("cause")
    served = json.loads(ended["output"])
    assert [shard["shard_index"] for shard in served] == [0, 1, 2]
    assert {(shard["image_sha384"], shard["model_digest"]) for shard in served} == {(image_sha384(images[0]), digest)}

    s3 = aws.client("s3")
    request_bytes = s3.get_object(Bucket=BUCKET, Key=bundle["manifest_key"])["Body"].read()
    request = parse_enclave_manifest(request_bytes)
    sealed = {
        shard.index: s3.get_object(Bucket=BUCKET, Key=f"outbox/alice/b-0002/{sealed_results_key(shard.index)}")[
            "Body"
        ].read()
        for shard in request.shards
    }
    result = result_manifest(request, sha256_hex(request_bytes), sealed_entries(request, sealed)).to_json()
    predictions = open_enclave_result(owner_key(tmp_path / "home"), "alice", request_bytes, result, sealed)
    clear = xgboost.Booster(model_file=bytearray(model_bytes)).predict(xgboost.DMatrix(records))
    assert np.array_equal(predictions, clear.astype(np.float64))  # 100% agreement with the clear model
    fragments = plaintext_fragments(records, records) + plaintext_fragments(predictions, predictions)
    for listed in s3.list_objects_v2(Bucket=BUCKET)["Contents"]:  # no record or prediction in any object
        body = s3.get_object(Bucket=BUCKET, Key=listed["Key"])["Body"].read()
        assert not numbers_in_text(body, fragments), listed["Key"]
    assert not numbers_in_text(runner.log.read_bytes(), fragments)


def test_a_bundle_served_by_an_enclave_changed_by_one_byte_fails_as_attestation_refused_naming_it(
    enclave_stack: dict[str, str],
    shard_machine: str,
    images: tuple[Path, Path],
    model: tuple[bytes, Any],
    running_enclave: Any,
    tmp_path: Path,
) -> None:
    model_bytes, records = model
    bundle = _drop(enclave_stack, records[:10], "b-0003", tmp_path / "home", tmp_path / "bundle")
    instance = aws.role_session(enclave_stack["EnclaveInstanceRoleArn"], "enclave-instance")
    _, parent = running_enclave(images[1])
    parent.load_model(XGBOOST_JSON, model_bytes)
    started = aws.client("stepfunctions").start_execution(
        stateMachineArn=shard_machine,
        input=json.dumps({"bundle": bundle, "model_package_arn": PACKAGE, "shards": [0]}),
    )
    ended = _run_fleet_until_done(
        started["executionArn"],
        _worker(enclave_stack, parent, images[1], instance),
        enclave_stack["EnclaveShardQueueUrl"],
        instance,
    )
    assert ended["status"] == "FAILED"
    history = aws.client("stepfunctions").get_execution_history(executionArn=started["executionArn"])["events"]
    failed = [event["taskFailedEventDetails"] for event in history if event["type"] == "TaskFailed"]
    assert failed and failed[0]["error"] == "ShardRefused"
    reason = json.loads(failed[0]["cause"])
    assert (reason["code"], reason["shard"]) == ("attestation_refused", 0)
    assert image_sha384(images[1]) in reason["message"] and image_sha384(images[0]) not in reason["message"]
    assert not aws.client("s3").list_objects_v2(Bucket=BUCKET, Prefix="outbox/alice/b-0003/").get("Contents")


def _failed_reason(execution: str) -> tuple[str, dict[str, Any]]:
    history = aws.client("stepfunctions").get_execution_history(executionArn=execution)["events"]
    failed = [event["taskFailedEventDetails"] for event in history if event["type"] == "TaskFailed"]
    assert failed, "no task failed"
    return failed[0]["error"], json.loads(failed[0]["cause"])


def test_a_shard_of_another_model_or_without_an_enclave_fails_with_its_reason(
    enclave_stack: dict[str, str],
    shard_machine: str,
    images: tuple[Path, Path],
    model: tuple[bytes, Any],
    tmp_path: Path,
) -> None:
    _, records = model
    bundle = _drop(enclave_stack, records[:5], "b-0004", tmp_path / "home", tmp_path / "bundle")
    instance = aws.role_session(enclave_stack["EnclaveInstanceRoleArn"], "enclave-instance")
    nowhere = EnclaveConnection(f"unix:{tmp_path / 'no-enclave.sock'}", timeout=2)
    worker = _worker(enclave_stack, nowhere, images[0], instance)
    for package, (error, code) in (
        (PACKAGE.replace("/1", "/2"), ("ShardRefused", "model_mismatch")),  # not the package the workflow chose
        (PACKAGE, ("ShardFailed", "enclave_unavailable")),  # retried by the workflow: the enclave may come back
    ):
        started = aws.client("stepfunctions").start_execution(
            stateMachineArn=shard_machine,
            input=json.dumps({"bundle": bundle, "model_package_arn": package, "shards": [0]}),
        )
        ended = _run_fleet_until_done(started["executionArn"], worker, enclave_stack["EnclaveShardQueueUrl"], instance)
        assert ended["status"] == "FAILED"
        named, reason = _failed_reason(started["executionArn"])
        assert (named, reason["code"], reason["shard"]) == (error, code, 0)


def test_the_fleet_launches_enclave_enabled_instances_from_zero(enclave_stack: dict[str, str]) -> None:
    (group,) = aws.client("autoscaling").describe_auto_scaling_groups(
        AutoScalingGroupNames=[enclave_stack["EnclaveFleetName"]]
    )["AutoScalingGroups"]
    assert (group["MinSize"], group["DesiredCapacity"]) == (0, 0)
    template = group["LaunchTemplate"]
    (version,) = aws.client("ec2").describe_launch_template_versions(
        LaunchTemplateId=template["LaunchTemplateId"], Versions=[str(template["Version"])]
    )["LaunchTemplateVersions"]
    assert version["LaunchTemplateData"]["EnclaveOptions"] == {"Enabled": True}
    policies = aws.client("autoscaling").describe_policies(AutoScalingGroupName=group["AutoScalingGroupName"])
    kinds = {policy["PolicyType"] for policy in policies["ScalingPolicies"]}
    assert kinds == {"TargetTrackingScaling", "StepScaling"}


# ---- a language model's text shards ------------------------------------------------------------------------------

PROMPTS = ["the patient reports", "the contract renewal", "please summarise the clinical note"]
SETTINGS = GenerationSettings(max_new_tokens=10, temperature=0.7, top_p=0.9, seed=11)


@pytest.fixture(scope="module")
def language_model(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A small Bloom with random weights and a locally trained tokenizer, packed as the enclave path carries it."""
    return pack_folder(tiny_bloom(tmp_path_factory.mktemp("bloom") / "model"))


def _text_work(
    key: dict[str, Any], prompts: list[str], owner: x25519.X25519PrivateKey, settings: GenerationSettings = SETTINGS
) -> ShardWork:
    """Alice's text shard: her prompts under her data key, bound to her generation settings."""
    bound = ShardBinding(ALICE.owner, ALICE.bundle_id, ALICE.shard, settings.digest())
    return ShardWork(
        binding=bound,
        encrypted_data_key=key["made"]["CiphertextBlob"],
        encrypted_records=encrypt_records(key["made"]["Plaintext"], texts_to_bytes(prompts), bound),
        owner_public_key=owner.public_key().public_bytes_raw(),
        generation=settings,
    )


def test_the_enclave_process_completes_a_text_shard_only_its_owner_opens_as_the_model_does_in_clear(
    key: dict[str, Any], images: tuple[Path, Path], language_model: bytes, running_enclave: Any
) -> None:
    runner, parent = running_enclave(images[0])
    assert parent.load_model(CAUSAL_LM, language_model) == hashlib.sha256(language_model).hexdigest()
    owner_key = x25519.X25519PrivateKey.generate()
    answer = parent.serve_shard(_text_work(key, PROMPTS, owner_key), session=key["enclave"])
    bound = ShardBinding(ALICE.owner, ALICE.bundle_id, ALICE.shard, SETTINGS.digest())
    completions = texts_from_bytes(open_results(owner_key, answer.sealed_results, bound), "results")
    assert answer.samples == len(PROMPTS)
    assert completions == load_language_model(language_model).complete(PROMPTS, SETTINGS)  # as in clear
    with pytest.raises(ValueError, match="does not open"):  # sealed to the settings the owner chose
        open_results(owner_key, answer.sealed_results, ALICE)
    log = runner.log.read_text()
    assert not any(text in log for text in [*PROMPTS, *(c for c in completions if len(c) > 3)])


@pytest.mark.parametrize(
    ("prompts", "reason"),
    [
        (["fine", "   "], "empty_prompt"),
        (["fine", " ".join(["the patient reports mild pain"] * 400)], "prompt_too_long"),
    ],
    ids=["an-empty-prompt", "a-prompt-over-the-token-limit"],
)
def test_a_prompt_the_model_will_not_complete_is_refused_by_name_and_index(
    key: dict[str, Any], images: tuple[Path, Path], nsm_for: Any, language_model: bytes, prompts: list[str],
    reason: str,
) -> None:  # fmt: skip
    enclave = EnclaveApplication(
        load_model(CAUSAL_LM, language_model), KeyRelease(aws.client("kms", key["enclave"]), nsm_for(images[0]))
    )
    with pytest.raises(ShardRefused) as refused:
        enclave.run(_text_work(key, prompts, x25519.X25519PrivateKey.generate()))
    assert refused.value.reason == reason and "[1]" in refused.value.detail
    assert "the patient" not in refused.value.detail  # the prompt's index, never its text


def test_settings_other_than_the_owners_open_nothing_and_texts_meet_only_a_language_model(
    key: dict[str, Any], images: tuple[Path, Path], nsm_for: Any, language_model: bytes, model: tuple[bytes, Any]
) -> None:
    release = KeyRelease(aws.client("kms", key["enclave"]), nsm_for(images[0]))
    owner = x25519.X25519PrivateKey.generate()
    work = _text_work(key, PROMPTS, owner)
    other = replace(SETTINGS, max_new_tokens=200)  # a parent that changed the owner's settings
    changed = replace(work, generation=other, binding=replace(work.binding, settings=other.digest()))
    with pytest.raises(ShardRefused) as refused:
        EnclaveApplication(load_model(CAUSAL_LM, language_model), release).run(changed)
    assert refused.value.reason == "tampered"
    with pytest.raises(ShardRefused) as refused:  # prompts for a model of numbers
        EnclaveApplication(load_model(XGBOOST_JSON, model[0]), release).run(work)
    assert refused.value.reason == "wrong_records"
