"""The enclave path's data, refused before it is used: models loaded as data only (XGBoost JSON, ONNX; a pickle in
either's place refused), records that open only under their own owner, bundle and shard, arrays read without
pickle, and results only the owner's key opens."""

from __future__ import annotations

import hashlib
import io
import pickle
from typing import Any

import numpy as np
import pytest
import xgboost
from cryptography.hazmat.primitives.asymmetric import x25519
from skl2onnx import to_onnx
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from common.bundle.binding import ShardBinding
from common.bundle.enclave_crypto import (
    decrypt_records,
    encrypt_records,
    open_results,
    records_from_bytes,
    records_to_bytes,
    seal_results,
)
from common.bundle.schema import BundleError
from common.enclave_model import ONNX, XGBOOST_JSON
from containers.enclave.models import ModelError, load_model
from containers.enclave.nsm import Nsm
from containers.enclave.server import EnclaveServer

FEATURES, LABELS = load_breast_cancer(return_X_y=True)
BINDING = ShardBinding(owner="alice", bundle_id="b-0001", shard=3)
DATA_KEY = bytes(range(32))


@pytest.fixture(scope="module")
def xgboost_json(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("xgb") / "model.json"
    xgboost.XGBClassifier(n_estimators=10, max_depth=3).fit(FEATURES, LABELS).get_booster().save_model(path)
    return path.read_bytes()


def test_an_xgboost_json_model_predicts_as_xgboost_does(xgboost_json: bytes) -> None:
    model = load_model(XGBOOST_JSON, xgboost_json)
    clear = xgboost.Booster(model_file=bytearray(xgboost_json)).predict(xgboost.DMatrix(FEATURES[:20]))
    assert model.features == FEATURES.shape[1] and len(model.digest) == 64
    assert np.array_equal(model.predict(FEATURES[:20]), clear.astype(np.float64))


def test_a_scikit_learn_pipeline_exported_to_onnx_predicts_its_probabilities() -> None:
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(FEATURES, LABELS)
    graph = to_onnx(
        pipeline, FEATURES[:1].astype(np.float32), options={"zipmap": False}, target_opset={"": 17, "ai.onnx.ml": 3}
    )
    model = load_model(ONNX, graph.SerializeToString())
    predicted = model.predict(FEATURES[:50])
    assert predicted.shape == (50, 2)
    assert np.allclose(predicted, pipeline.predict_proba(FEATURES[:50].astype(np.float32)), atol=1e-4)


@pytest.mark.parametrize(
    ("model_format", "content", "reason"),
    [
        (XGBOOST_JSON, pickle.dumps({"learner": "a pickle"}), "JSON format"),
        (ONNX, pickle.dumps(LogisticRegression()), "ONNX Runtime refused"),
        (XGBOOST_JSON, b'{"learner": {"not": "a model"}}', "XGBoost refused"),
        ("pickle", b"anything", "format must be one of"),
        (ONNX, b"", "1 to"),
    ],
)
def test_a_model_that_is_not_data_of_its_format_is_refused(model_format: str, content: bytes, reason: str) -> None:
    with pytest.raises(ModelError, match=reason):
        load_model(model_format, content)


def test_records_open_under_their_own_binding_only() -> None:
    sealed = encrypt_records(DATA_KEY, records_to_bytes(FEATURES[:5]), BINDING)
    assert np.array_equal(
        records_from_bytes(decrypt_records(DATA_KEY, sealed, BINDING), "records", max_values=1000), FEATURES[:5]
    )
    for other in (
        ShardBinding("bob", BINDING.bundle_id, BINDING.shard),
        ShardBinding(BINDING.owner, "b-0002", BINDING.shard),
        ShardBinding(BINDING.owner, BINDING.bundle_id, 4),
    ):
        with pytest.raises(BundleError) as refused:
            decrypt_records(DATA_KEY, sealed, other)
        assert refused.value.code == "tampered"


def _npy(array: Any) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (_npy(np.array([{"a": 1}], dtype=object)), "not an .npy array"),
        (_npy(np.array([1.0, np.nan])), "not a finite number"),
        (_npy(np.zeros((2, 2, 2))), "1- or 2-dimensional"),
        (_npy(np.array(["text"])), "1- or 2-dimensional array of numbers"),
        (_npy(np.zeros(2000)), "over the limit"),
        (b"not npy at all", "not an .npy array"),
    ],
)
def test_records_that_are_not_an_array_of_numbers_are_refused_without_unpickling(content: bytes, problem: str) -> None:
    with pytest.raises(BundleError, match=problem):
        records_from_bytes(content, "records", max_values=1000)


def test_results_open_with_the_owners_key_and_binding_only() -> None:
    owner = x25519.X25519PrivateKey.generate()
    sealed = seal_results(owner.public_key().public_bytes_raw(), b"predictions", BINDING)
    assert open_results(owner, sealed, BINDING) == b"predictions"
    for key, binding in (
        (x25519.X25519PrivateKey.generate(), BINDING),
        (owner, ShardBinding(BINDING.owner, BINDING.bundle_id, 0)),
    ):
        with pytest.raises(BundleError, match="does not open"):
            open_results(key, sealed, binding)
    with pytest.raises(BundleError, match="X25519"):
        seal_results(b"short", b"predictions", BINDING)


def test_a_model_larger_than_a_message_loads_from_its_parts_in_order_and_whole(xgboost_json: bytes) -> None:
    """The enclave's side of a model sent in parts (a language model's gigabytes): each part in order, the whole
    checked against the size and SHA-256 the first announced before it is loaded."""
    server = EnclaveServer(Nsm())  # loading a model asks the NSM nothing
    whole = {"format": XGBOOST_JSON, "size": len(xgboost_json), "sha256": hashlib.sha256(xgboost_json).hexdigest()}
    third = len(xgboost_json) // 3 + 1
    parts = [{**whole, "offset": o, "data": xgboost_json[o : o + third]} for o in range(0, len(xgboost_json), third)]
    answers = [server.answer({"model_part": part}) for part in parts]
    assert answers[:-1] == [{"received": third}, {"received": 2 * third}]
    assert answers[-1] == {"loaded": load_model(XGBOOST_JSON, xgboost_json).digest}
    assert server.answer({"model_part": parts[1]})["refused"] == "invalid_model"  # out of order
    lying = {**whole, "sha256": "0" * 64}
    for part in parts[:-1]:
        server.answer({"model_part": {**part, **lying}})
    refused = server.answer({"model_part": {**parts[-1], **lying}})
    assert refused == {"refused": "invalid_model", "detail": "the model's parts are not the model announced"}


def test_an_unforeseen_failure_of_one_request_is_refused_by_name_and_the_enclave_serves_on(
    monkeypatch: pytest.MonkeyPatch, xgboost_json: bytes
) -> None:
    server = EnclaveServer(Nsm())

    def fails(request: dict[str, Any]) -> dict[str, Any]:
        raise RuntimeError("probability tensor contains inf: record 4.2, 17.3")  # text that may quote data

    monkeypatch.setattr(server, "answer", fails)
    assert server.answer_safely({"shard": {}}) == {
        "refused": "internal_error",
        "detail": "the enclave could not serve it (RuntimeError)",
    }
    monkeypatch.undo()
    assert "loaded" in server.answer_safely({"model": {"format": XGBOOST_JSON, "content": xgboost_json}})
