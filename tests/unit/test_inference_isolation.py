"""What an owner's bytes can do to the endpoint, over real compiled circuits (a depth-3 tree served; a logistic
regression and a smaller tree as the other circuits), real keys and the real evaluator processes; S3 by moto.

Keys and ciphertexts that do not fit the served circuit are refused by name before native code sees them, and no
evaluator dies of them. A request whose evaluator crashes fails alone, named; the others are served, and the
evaluator is replaced. A key larger than the key cache is served without being cached. A 500 says an id only."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from common.bundle.messages import parse_shard_result
from common.bundle.shards import parse_shard
from containers.inference.app import create_app
from containers.inference.engine import InferenceEngine
from containers.inference.evaluator import Evaluator
from containers.inference.handlers import Handlers
from containers.training.data import builtin_dataset_csv
from containers.training.preprocess import preprocess
from containers.training.train import train
from containers.training.training_settings import TrainingSettings
from tests.unit.test_inference_app import BUCKET, PACKAGE_ARN, clear_predictions, post, rows, shard_request, upload

# A well-formed serialized key set with no key at all: it deserializes, and evaluating a circuit that needs keys
# with it crashes native code.
EMPTY_KEY_SET = bytes.fromhex("00000000010000000000000000000000")
START_TIMEOUT_S = 300.0  # how long a replaced evaluator may take to load the circuit on a busy machine


class UncheckedEvaluator(Evaluator):
    """An evaluator without the key check: what crashes native code reaches it (the spawned process imports
    this module to run it)."""

    def check_key(self, data: bytes) -> None:
        pass


class StoppedEvaluator(Evaluator):
    """An evaluator that is killed as the out-of-memory killer kills: the endpoint's fault, not the input's."""

    def evaluate(self, sha256: str, ciphertexts: list[bytes], field: str) -> list[bytes]:
        os.kill(os.getpid(), signal.SIGKILL)
        raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    source = builtin_dataset_csv("breast_cancer", root / "in" / "bc.csv")
    preprocess(source.parent, root / "splits", "label", 0.25, 3)
    settings = {
        "tree": TrainingSettings(model_type="decision_tree", max_depth=3, n_bits=3),
        "other-tree": TrainingSettings(model_type="decision_tree", max_depth=2, n_bits=2),
        "linear": TrainingSettings(model_type="logistic_regression", n_bits=3),
    }
    for name, setting in settings.items():
        train(setting, root / "splits/train", root / "splits/preprocessing", root / name)
    return {name: root / name for name in settings}


@pytest.fixture(scope="module")
def clients(models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from concrete.ml.deployment import FHEModelClient

    made = {}
    for name, folder in models.items():
        made[name] = FHEModelClient(path_dir=str(folder), key_dir=str(tmp_path_factory.mktemp(f"keys-{name}")))
        made[name].generate_private_and_evaluation_keys()
    return made


@pytest.fixture(scope="module")
def engine(models: dict[str, Path]) -> Iterator[InferenceEngine]:
    engine = InferenceEngine(models["tree"], evaluators=2, threads=1)
    yield engine
    engine.close()


def encrypt(client: Any, x: np.ndarray) -> list[bytes]:  # type: ignore[type-arg]
    return [client.quantize_encrypt_serialize(row[None, :]) for row in x]


def predictions(s3: Any, client: Any, response: Any) -> list[int]:
    result = parse_shard_result(response.get_data())
    data = s3.get_object(Bucket=BUCKET, Key=result.result_uri.split("/", 3)[3])["Body"].read()
    outputs = parse_shard(data, expected_samples=result.samples, kind="results")
    return [int(np.argmax(client.deserialize_decrypt_dequantize(o)[0])) for o in outputs]


def error_of(response: Any) -> dict[str, str]:
    return dict(json.loads(response.get_data())["error"])


def key_reads(s3: Any) -> list[str]:
    reads: list[str] = []
    s3.meta.events.register(
        "provide-client-params.s3.GetObject",
        lambda params, **_: reads.append(params["Key"]) if params["Key"].endswith(".ekey") else None,
    )
    return reads


def test_the_circuits_key_sets_differ_as_the_tests_need(models: dict[str, Path], clients: dict[str, Any]) -> None:
    """The premise of the key tests below: the other tree's key set has more keys, and a larger key, than the
    served tree's; the linear model's has none."""
    from concrete.fhe import Server

    def keyset(name: str) -> dict[str, Any]:
        info = json.loads(Server.load(models[name] / "server.zip").program_info.serialize())
        return dict(info["keyset"])

    tree, other, linear = keyset("tree"), keyset("other-tree"), keyset("linear")
    assert len(tree["lweBootstrapKeys"]) == 1 < len(other["lweBootstrapKeys"])
    assert linear["lweBootstrapKeys"] == [] and linear["lweKeyswitchKeys"] == []
    assert len(clients["other-tree"].get_serialized_evaluation_keys()) > len(
        clients["tree"].get_serialized_evaluation_keys()
    )


def with_payload_cut(key: bytes, payload_bytes: int) -> bytes:
    """``key`` with its blob of ``payload_bytes`` declared half as long: the message stays well-formed and the
    key's description unchanged. A Cap'n Proto byte list's pointer is a word whose low two bits are 01 and whose
    upper 32 bits are 2 (bytes) | length << 3: one such word, of this length, is no accident."""
    words = np.frombuffer(key, dtype="<u8").copy()
    found = np.flatnonzero((words & 3 == 1) & (words >> 32 == (2 | payload_bytes << 3)))
    assert len(found) == 1
    words[found[0]] = (int(words[found[0]]) & ((1 << 35) - 1)) | ((payload_bytes // 2) << 35)
    return words.tobytes()


def bootstrap_key_payload_bytes(model: Path) -> int:
    """The bytes of the circuit's (seeded) bootstrap key: a body per GLWE row, one 128-bit seed."""
    from concrete.fhe import Server

    keyset = json.loads(Server.load(model / "server.zip").program_info.serialize())["keyset"]
    (bootstrap,) = keyset["lweBootstrapKeys"]
    assert bootstrap["compression"] == "seed"
    p = bootstrap["params"]
    return int(p["inputLweDimension"] * p["levelCount"] * (p["glweDimension"] + 1) * p["polynomialSize"] * 8 + 16)


@pytest.mark.parametrize(
    ("key_of", "message"),
    [
        ("16 bytes", "bootstrap keys: the key has 0, the served circuit uses 1"),
        ("linear", "bootstrap keys: the key has 0, the served circuit uses 1"),
        ("other-tree", "a key of the served model takes at most"),
        ("truncated", "is not a serialized evaluation key"),
        ("payload cut", "bootstrap key 0 carries "),
        ("oversized", "a key of the served model takes at most"),
    ],
)
def test_a_key_that_does_not_fit_the_circuit_is_refused_by_name(
    engine: InferenceEngine, s3: Any, clients: dict[str, Any], models: dict[str, Path], key_of: str, message: str
) -> None:
    tree_key = clients["tree"].get_serialized_evaluation_keys()
    key = {
        "16 bytes": EMPTY_KEY_SET,
        "linear": clients["linear"].get_serialized_evaluation_keys(),
        "other-tree": clients["other-tree"].get_serialized_evaluation_keys(),
        "truncated": tree_key[: len(tree_key) // 2],
        "payload cut": with_payload_cut(tree_key, bootstrap_key_payload_bytes(models["tree"])),
        "oversized": tree_key + bytes(engine.key_limit),
    }[key_of]
    app = create_app(Handlers(engine, s3, PACKAGE_ARN))
    evaluators = engine.pool.pids()
    upload(s3, key, encrypt(clients["tree"], rows(models["tree"], 2)), "hostile-key")
    response = post(app, shard_request("hostile-key"))
    assert response.status_code == 400
    error = error_of(response)
    assert (error["field"], error["code"]) == ("evaluation_key", "bad_key")
    assert message in error["message"]
    assert engine.pool.pids() == evaluators  # refused before native code: no evaluator died


@pytest.mark.parametrize("ciphertext_of", ["random bytes", "truncated", "linear"])
def test_a_ciphertext_that_does_not_fit_the_circuit_is_refused_by_name(
    engine: InferenceEngine, s3: Any, clients: dict[str, Any], models: dict[str, Path], ciphertext_of: str
) -> None:
    good = encrypt(clients["tree"], rows(models["tree"], 3))
    bad = {
        "random bytes": np.random.default_rng(7).bytes(len(good[1])),
        "truncated": good[1][: len(good[1]) - 8],
        "linear": encrypt(clients["linear"], rows(models["linear"], 1))[0],
    }[ciphertext_of]
    app = create_app(Handlers(engine, s3, PACKAGE_ARN))
    evaluators = engine.pool.pids()
    upload(s3, clients["tree"].get_serialized_evaluation_keys(), [good[0], bad, good[2]], "hostile-ciphertext")
    response = post(app, shard_request("hostile-ciphertext"))
    assert response.status_code == 400
    error = error_of(response)
    assert (error["field"], error["code"]) == ("shards[0].samples[1]", "bad_ciphertext")
    assert engine.pool.pids() == evaluators


def test_a_crash_fails_its_own_request_only_and_the_evaluator_is_replaced(
    s3: Any, clients: dict[str, Any], models: dict[str, Path]
) -> None:
    engine = InferenceEngine(models["tree"], evaluators=2, threads=1, evaluator=UncheckedEvaluator)
    try:
        app = create_app(Handlers(engine, s3, PACKAGE_ARN))
        x = rows(models["tree"], 4)
        upload(s3, EMPTY_KEY_SET, encrypt(clients["tree"], x[:2]), "crashing")
        upload(s3, clients["tree"].get_serialized_evaluation_keys(), encrypt(clients["tree"], x), "concurrent")
        before = set(engine.pool.pids())
        responses: dict[str, Any] = {}

        def send(bundle_id: str) -> None:
            responses[bundle_id] = post(app, shard_request(bundle_id))

        threads = [threading.Thread(target=send, args=(b,)) for b in ("crashing", "concurrent")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        crashed = responses["crashing"]
        assert crashed.status_code == 400
        error = error_of(crashed)
        assert (error["field"], error["code"]) == ("shards[0]", "evaluation_crashed")
        assert "the FHE evaluator crashed (SIG" in error["message"]
        assert responses["concurrent"].status_code == 200, responses["concurrent"].get_data()
        expected = clear_predictions(models["tree"], x).tolist()
        assert predictions(s3, clients["tree"], responses["concurrent"]) == expected

        assert engine.pool.wait_full(START_TIMEOUT_S)
        after = set(engine.pool.pids())
        assert len(after) == 2 and len(before - after) == 1  # the crashed one, replaced
        assert app.test_client().get("/ping").status_code == 200
        upload(s3, clients["tree"].get_serialized_evaluation_keys(), encrypt(clients["tree"], x[2:]), "later")
        for _ in range(2):  # whichever evaluator takes it
            later = post(app, shard_request("later"))
            assert later.status_code == 200, later.get_data()
            assert predictions(s3, clients["tree"], later) == expected[2:]
    finally:
        engine.close()


def test_a_key_larger_than_the_cache_is_served_without_caching(
    s3: Any, clients: dict[str, Any], models: dict[str, Path]
) -> None:
    engine = InferenceEngine(models["tree"], evaluators=1, threads=1, key_cache_bytes=1024 * 1024)
    try:
        assert engine.pool.facts.key_memory_bytes > engine.key_cache_bytes
        app = create_app(Handlers(engine, s3, PACKAGE_ARN))
        x = rows(models["tree"], 2)
        manifest = upload(s3, clients["tree"].get_serialized_evaluation_keys(), encrypt(clients["tree"], x), "big")
        reads = key_reads(s3)
        for _ in range(2):
            response = post(app, shard_request("big"))
            assert response.status_code == 200, response.get_data()
            assert predictions(s3, clients["tree"], response) == clear_predictions(models["tree"], x).tolist()
        assert reads == [manifest.evaluation_key.uri.split("/", 3)[3]] * 2  # read again: it was not kept
    finally:
        engine.close()


def test_a_500_says_an_id_and_the_details_go_to_the_log_only(
    s3: Any, clients: dict[str, Any], models: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    engine = InferenceEngine(models["tree"], evaluators=1, threads=1, evaluator=StoppedEvaluator)
    try:
        app = create_app(Handlers(engine, s3, PACKAGE_ARN))
        upload(
            s3,
            clients["tree"].get_serialized_evaluation_keys(),
            encrypt(clients["tree"], rows(models["tree"], 1)),
            "stopped",
        )
        with caplog.at_level(logging.ERROR, logger="containers.inference"):
            response = post(app, shard_request("stopped"))
        assert response.status_code == 500
        error = error_of(response)
        assert error["code"] == "internal"
        assert "SIGKILL" not in error["message"] and "stopped" not in error["message"]
        error_id = error["message"].split()[2].rstrip(":")
        logged = [r for r in caplog.records if error_id in r.getMessage()]
        assert logged and logged[0].exc_info is not None and "SIGKILL" in str(logged[0].exc_info[1])
        assert engine.pool.wait_full(START_TIMEOUT_S)  # a stopped evaluator is replaced as well
    finally:
        engine.close()
