"""The serving app in-process: ``POST /invocations`` with the reference request and shard requests, over a
real compiled model and real keys, S3 by moto. Bad requests get a 400 naming the field; the app keeps serving."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from common import artifacts
from common.bundle.manifest import KeyRef, Manifest, ShardEntry, package_ref, shard_key
from common.bundle.messages import ShardRequest, parse_shard_result
from common.bundle.schema import sha256_hex, utc_now
from common.bundle.shards import encode_shard, parse_shard
from common.bundle.store import BundleLayout, put_bundle
from common.preprocessing import PreprocessingRecord
from common.versions import VersionsRecord
from containers.inference.app import create_app
from containers.inference.engine import InferenceEngine
from containers.inference.handlers import Handlers
from containers.training.data import builtin_dataset_csv
from containers.training.preprocess import preprocess
from containers.training.train import train
from containers.training.training_settings import TrainingSettings
from tests.unit.conftest import UNIT_BUCKET, UNIT_OWNER

PACKAGE_ARN = "arn:aws:sagemaker:us-east-1:000000000000:model-package/fhe-models/1"
BUCKET = UNIT_BUCKET


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("model")
    source = builtin_dataset_csv("breast_cancer", root / "in" / "bc.csv")
    preprocess(source.parent, root / "splits", "label", 0.25, 3)
    train(
        TrainingSettings(model_type="logistic_regression"),
        root / "splits/train",
        root / "splits/preprocessing",
        root / "m",
    )
    return root / "m"


@pytest.fixture(scope="module")
def client(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    from concrete.ml.deployment import FHEModelClient

    fhe_client = FHEModelClient(path_dir=str(model_dir), key_dir=str(tmp_path_factory.mktemp("keys")))
    fhe_client.generate_private_and_evaluation_keys()
    return fhe_client


@pytest.fixture(scope="module")
def engine(model_dir: Path) -> Iterator[InferenceEngine]:
    engine = InferenceEngine(model_dir, evaluators=2, threads=2)
    yield engine
    engine.close()


def rows(model_dir: Path, n: int) -> np.ndarray:  # type: ignore[type-arg]
    from sklearn.datasets import load_breast_cancer

    record = PreprocessingRecord.load(model_dir / artifacts.PREPROCESSING_JSON)
    return record.transform(load_breast_cancer().data[:n])


def clear_predictions(model_dir: Path, x: np.ndarray) -> np.ndarray:  # type: ignore[type-arg]
    from concrete.ml.common.serialization.loaders import loads

    return np.asarray(loads((model_dir / artifacts.MODEL_JSON).read_text()).predict(x, fhe="disable"))


def post(app: Any, body: Any) -> Any:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return app.test_client().post("/invocations", data=raw, content_type="application/json")


def upload(s3: Any, key: bytes, ciphertexts: list[bytes], bundle_id: str) -> Manifest:
    """A one-shard bundle of ``ciphertexts`` under evaluation key ``key``, dropped as the client drops it."""
    layout = BundleLayout(BUCKET, UNIT_OWNER)
    key_uri = layout.evaluation_key(sha256_hex(key))
    s3.put_object(Bucket=BUCKET, Key=key_uri.key, Body=key)
    shard = encode_shard(ciphertexts)
    manifest = Manifest(
        kind="request",
        bundle_id=bundle_id,
        created_at=utc_now(),
        model=package_ref(PACKAGE_ARN),
        versions=VersionsRecord.current().to_dict(),
        evaluation_key=KeyRef(sha256_hex(key), str(key_uri), len(key)),
        shards=(ShardEntry(0, shard_key(0), len(ciphertexts), sha256_hex(shard), len(shard)),),
    )
    put_bundle(s3, layout.request_prefix(bundle_id), manifest, lambda _: shard)
    return manifest


def upload_bundle(s3: Any, client: Any, x: np.ndarray, bundle_id: str) -> Manifest:  # type: ignore[type-arg]
    ciphertexts = [client.quantize_encrypt_serialize(row[None, :]) for row in x]
    return upload(s3, client.get_serialized_evaluation_keys(), ciphertexts, bundle_id)


def shard_request(bundle_id: str) -> dict[str, Any]:
    layout = BundleLayout(BUCKET, UNIT_OWNER)
    request = ShardRequest(
        str(layout.request_manifest(bundle_id)), 0, str(layout.result_prefix(bundle_id).join(shard_key(0, "results")))
    )
    return dict(json.loads(request.to_json()))


def test_ping(engine: InferenceEngine, s3: Any) -> None:
    app = create_app(Handlers(engine, s3, PACKAGE_ARN))
    response = app.test_client().get("/ping")
    assert response.status_code == 200 and json.loads(response.get_data())["status"] == "healthy"


def test_reference_request_answers_the_encrypted_prediction(
    engine: InferenceEngine, s3: Any, client: Any, model_dir: Path
) -> None:
    app = create_app(Handlers(engine, s3, PACKAGE_ARN))
    x = rows(model_dir, 3)
    s3.put_object(Bucket=BUCKET, Key="ref/keys.bin", Body=client.get_serialized_evaluation_keys())
    for i, row in enumerate(x):
        s3.put_object(Bucket=BUCKET, Key=f"ref/q{i}.bin", Body=client.quantize_encrypt_serialize(row[None, :]))
        response = post(
            app,
            {
                "evaluation_keys_uri": f"s3://{BUCKET}/ref/keys.bin",
                "encrypted_query_uri": f"s3://{BUCKET}/ref/q{i}.bin",
            },
        )
        assert response.status_code == 200 and response.mimetype == "application/octet-stream"
        scores = client.deserialize_decrypt_dequantize(response.get_data())
        assert int(np.argmax(scores[0])) == int(clear_predictions(model_dir, row[None, :])[0])


def test_shard_request_writes_the_result_shard(engine: InferenceEngine, s3: Any, client: Any, model_dir: Path) -> None:
    app = create_app(Handlers(engine, s3, PACKAGE_ARN))
    x = rows(model_dir, 12)
    upload_bundle(s3, client, x, "unit-bundle-1")
    response = post(app, shard_request("unit-bundle-1"))
    assert response.status_code == 200, response.get_data()
    result = parse_shard_result(response.get_data())
    assert result.samples == 12
    data = s3.get_object(Bucket=BUCKET, Key=result.result_uri.split("/", 3)[3])["Body"].read()
    assert sha256_hex(data) == result.sha256
    outputs = parse_shard(data, expected_samples=12, kind="results")
    predicted = [int(np.argmax(client.deserialize_decrypt_dequantize(o)[0])) for o in outputs]
    assert predicted == clear_predictions(model_dir, x).tolist()


def test_evaluation_keys_are_fetched_once_and_cached(s3: Any, client: Any, model_dir: Path) -> None:
    # An engine of its own: no evaluator has loaded the key yet.
    engine = InferenceEngine(model_dir, evaluators=2, threads=2)
    app = create_app(Handlers(engine, s3, PACKAGE_ARN))
    manifest = upload_bundle(s3, client, rows(model_dir, 2), "unit-bundle-2")
    upload_bundle(s3, client, rows(model_dir, 2), "unit-bundle-3")
    key_reads: list[str] = []
    s3.meta.events.register(
        "provide-client-params.s3.GetObject",
        lambda params, **_: key_reads.append(params["Key"]) if params["Key"].endswith(".ekey") else None,
    )
    try:
        assert post(app, shard_request("unit-bundle-2")).status_code == 200
        assert post(app, shard_request("unit-bundle-3")).status_code == 200
    finally:
        engine.close()
    assert key_reads == [manifest.evaluation_key.uri.split("/", 3)[3]]


@pytest.mark.parametrize(
    ("body", "field", "code"),
    [
        (b"not json", "request", "not_json"),
        ([1, 2], "request", "not_json"),
        ({"hello": 1}, "request", "invalid"),
        ({"evaluation_keys_uri": "s3://fhe-bundles-unit/ref/keys.bin"}, "encrypted_query_uri", "missing_field"),
        (
            {"evaluation_keys_uri": "s3://x/../../etc", "encrypted_query_uri": "s3://b-1/q"},
            "evaluation_keys_uri",
            "invalid",
        ),
        (
            {"evaluation_keys_uri": f"s3://{BUCKET}/nope", "encrypted_query_uri": f"s3://{BUCKET}/nope"},
            "evaluation_keys_uri",
            "missing_object",
        ),
        ({"fhe_request": "fhe-shard", "format_version": 1}, "manifest_uri", "missing_field"),
    ],
)
def test_bad_requests_get_a_named_error_and_the_app_keeps_serving(
    engine: InferenceEngine, s3: Any, client: Any, model_dir: Path, body: Any, field: str, code: str
) -> None:
    app = create_app(Handlers(engine, s3, PACKAGE_ARN))
    response = post(app, body)
    assert response.status_code == 400
    assert (
        json.loads(response.get_data())["error"]["field"] == field
        and json.loads(response.get_data())["error"]["code"] == code
    )
    upload_bundle(s3, client, rows(model_dir, 1), "unit-bundle-ok")
    assert post(app, shard_request("unit-bundle-ok")).status_code == 200


def test_a_foreign_ciphertext_is_refused_by_name(
    engine: InferenceEngine, s3: Any, client: Any, model_dir: Path
) -> None:
    app = create_app(Handlers(engine, s3, PACKAGE_ARN))
    s3.put_object(Bucket=BUCKET, Key="ref/keys.bin", Body=client.get_serialized_evaluation_keys())
    s3.put_object(Bucket=BUCKET, Key="ref/garbage.bin", Body=b"\x00" * 984)
    response = post(
        app,
        {"evaluation_keys_uri": f"s3://{BUCKET}/ref/keys.bin", "encrypted_query_uri": f"s3://{BUCKET}/ref/garbage.bin"},
    )
    assert response.status_code == 400
    assert json.loads(response.get_data())["error"]["code"] == "bad_ciphertext"
