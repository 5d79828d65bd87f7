"""The batch owner's client with an enclave model, on moto: the same commands (keys, encrypt, submit, wait,
decrypt) make a key pair instead of FHE keys, encrypt the prepared rows under a data key KMS makes for this owner's
bundle, and open the sealed result to the clear model's classes, keyed by the ids and scored against the labels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer

from client.batch_client import BatchClient, ClientSettings
from client.errors import FheClientError
from common import artifacts, aws
from common.bundle.binding import ShardBinding
from common.bundle.enclave_crypto import decrypt_records, records_from_bytes, records_to_bytes, seal_results
from common.bundle.enclave_manifest import parse_enclave_manifest, result_manifest, sealed_entries
from common.bundle.schema import sha256_hex
from common.bundle.store import BundleLayout, write_result_manifest
from common.enclave_model import EnclaveModelRecord
from common.preprocessing import PreprocessingRecord
from containers.enclave.models import load_model
from containers.training.enclave_training import EnclaveTrainingSettings
from containers.training.train import train_enclave
from tests.unit.conftest import UNIT_BUCKET, UNIT_OWNER

LAYOUT = BundleLayout(UNIT_BUCKET, UNIT_OWNER)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, breast_cancer_splits: Path) -> Path:
    folder = tmp_path_factory.mktemp("model") / "m"
    settings = EnclaveTrainingSettings(model_type="xgboost", n_estimators=20, max_depth=3)
    train_enclave(settings, breast_cancer_splits / "train", breast_cancer_splits / "preprocessing", folder)
    return folder


def _serve_in_enclave(s3: Any, kms: Any, trained: Path, request_bytes: bytes) -> None:
    """What the enclave and its parent do for each shard (tests/integration/test_enclave_path.py runs the real
    ones), then Assemble's result manifest."""
    request = parse_enclave_manifest(request_bytes)
    _, content = EnclaveModelRecord.load(trained)
    model = load_model("xgboost-json", content)
    sealed = {}
    for entry in request.shards:
        binding = ShardBinding(UNIT_OWNER, request.bundle_id, entry.index)
        data_key = kms.decrypt(
            CiphertextBlob=request.enclave.data_key, EncryptionContext=ShardBinding(UNIT_OWNER, request.bundle_id, 0)
            .encryption_context()
        )["Plaintext"]  # fmt: skip
        shard = s3.get_object(Bucket=UNIT_BUCKET, Key=LAYOUT.request_prefix(request.bundle_id).join(entry.key).key)
        records = records_from_bytes(decrypt_records(data_key, shard["Body"].read(), binding), "records",
                                     max_values=10**6).reshape(entry.samples, -1)  # fmt: skip
        sealed[entry.index] = seal_results(request.enclave.owner_public_key,
                                           records_to_bytes(model.predict(records)), binding)  # fmt: skip
    manifest = result_manifest(request, sha256_hex(request_bytes), sealed_entries(request, sealed))
    prefix = LAYOUT.result_prefix(request.bundle_id)
    for entry in manifest.shards:
        s3.put_object(Bucket=UNIT_BUCKET, Key=prefix.join(entry.key).key, Body=sealed[entry.index])
    write_result_manifest(s3, LAYOUT, manifest)


def test_the_client_runs_an_enclave_bundle_with_the_same_commands(
    s3: Any, trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    sagemaker, kms = aws.client("sagemaker"), aws.client("kms")
    key_arn = kms.create_key(Description="enclave key")["KeyMetadata"]["Arn"]
    s3.create_bucket(Bucket="models")
    sagemaker.create_model_package_group(ModelPackageGroupName="g")
    package_arn = sagemaker.create_model_package(
        ModelPackageGroupName="g",
        InferenceSpecification={
            "Containers": [{"Image": "unused:latest", "ModelDataUrl": "s3://models/model.tar.gz"}],
            "SupportedContentTypes": ["application/json"],
            "SupportedResponseMIMETypes": ["application/octet-stream"],
        },
        ModelApprovalStatus="Approved",
        CustomerMetadataProperties={
            artifacts.CLIENT_ARTIFACTS_PROPERTY: "s3://models/pipelines/p/exec-1/client",
            artifacts.MODEL_KIND_PROPERTY: "enclave",
        },
    )["ModelPackageArn"]
    for name in artifacts.ENCLAVE_CLIENT_ARTIFACTS:  # what the approval publishes for an enclave model
        s3.upload_file(str(trained / name), "models", f"published/g/1/{name}")
    home = tmp_path / "home"
    notes: list[str] = []
    without_key = BatchClient(ClientSettings(UNIT_OWNER, UNIT_BUCKET, "g", "fhe-e", home), notes=notes.append)
    client = BatchClient(ClientSettings(UNIT_OWNER, UNIT_BUCKET, "g", "fhe-e", home, key_arn), notes=notes.append)

    keys = client.keys()
    assert keys.model.kind == "enclave" and keys.evaluation_key is None and keys.owner_public_key is not None
    assert not (keys.model.folder / artifacts.CLIENT_ZIP).exists()
    assert not s3.list_objects_v2(Bucket=UNIT_BUCKET, Prefix=LAYOUT.keys_prefix.key).get("Contents")

    record = PreprocessingRecord.load(trained / artifacts.PREPROCESSING_JSON)
    data = load_breast_cancer()
    x, labels = data.data[:7], data.target[:7]
    source = tmp_path / "scoring.csv"
    source.write_text(
        "\n".join(
            [",".join(["patient", "diagnosis", *record.feature_names])]
            + [
                ",".join([f"P-{i}", str(label), *map(repr, row.tolist())])
                for i, (row, label) in enumerate(zip(x, labels, strict=True))
            ]
        )
        + "\n"
    )
    with pytest.raises(FheClientError, match="FHE_ENCLAVE_KEY_ARN"):
        without_key.encrypt(source, tmp_path / "nowhere", shard_size=3)
    encrypted = client.encrypt(
        source, tmp_path / "bundle", shard_size=3, id_columns=["patient"], label_column="diagnosis"
    )
    assert (encrypted.manifest.total_samples, len(encrypted.manifest.shards)) == (7, 3)
    # No estimate without the fleet's limits (EnclaveFleetSizing), which this client was not given.
    assert any(note.startswith("no estimate: the enclave fleet's limits are not known") for note in notes), notes
    submitted = client.submit(encrypted.folder)
    request_bytes = s3.get_object(Bucket=UNIT_BUCKET, Key=submitted.manifest.key)["Body"].read()
    assert parse_enclave_manifest(request_bytes).model.package_arn == package_arn
    # The result is opened against the request as kept on this machine: the owner's role cannot read its inbox.
    assert (home / "bundles" / f"{encrypted.bundle_id}.request.json").read_bytes() == request_bytes
    s3.delete_object(Bucket=UNIT_BUCKET, Key=submitted.manifest.key)

    _serve_in_enclave(s3, kms, trained, request_bytes)
    assert client.wait(encrypted.bundle_id, timeout=5).result == LAYOUT.result_manifest(encrypted.bundle_id)
    decrypted = client.decrypt(encrypted.bundle_id, tmp_path / "predictions.csv")
    _, content = EnclaveModelRecord.load(trained)
    clear = load_model("xgboost-json", content).predict(record.transform(x).astype(np.float64))
    assert decrypted.predicted_classes == [record.classes[int(p > 0.5)] for p in clear]  # 100% agreement
    assert np.allclose(decrypted.probabilities[:, 1], clear)
    lines = decrypted.predictions.read_text().splitlines()
    assert [line.split(",")[0] for line in lines[1:]] == [f"P-{i}" for i in range(7)]
    assert decrypted.accuracy is not None and decrypted.accuracy.rows == 7
