"""Evaluate step: accuracy in clear, in FHE simulation and in real FHE execution, FHE latency, key and ciphertext
sizes and the circuit's PBS count, written as ``evaluation.json`` in SageMaker's model quality metrics shape
(``multiclass_classification_metrics.<name>.value``). An enclave model (ModelKind=enclave) is evaluated in clear
(``evaluate_enclave``). Both kinds write what CheckQuality gates: ``accuracy_served``,
``accuracy_gap_clear_vs_served`` and the budget's interval; and ``model_digest``, which Register records.

It checks the accuracy budget's promise on the test split, which neither the search nor the fit saw: the
circuit's loss against the float model (``float_model.json``), paired row by row, with its confidence interval at
the budget's confidence (``certification.interval``). CheckQuality fails a model whose interval lies wholly above
the budget.

The real FHE part uses exactly the deployment path: ``client.zip`` makes keys and ciphertexts,
``server.zip`` evaluates them, the client decrypts.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common import artifacts
from common.archives import extract_tar
from common.enclave_model import EnclaveModelError, EnclaveModelRecord
from common.estimate import ModelCosts
from common.preprocessing import PreprocessingRecord
from common.versions import VersionsRecord
from containers.contract import StepInputError, container_path, run_entry_point
from containers.training import certification
from containers.training.concrete_internals import clear_predictions
from containers.training.search import SearchResult, SearchSettings, levers_of, simulated_draws
from containers.training.train import load_split
from containers.training.training_settings import TrainingSettings

METRICS_GROUP = "multiclass_classification_metrics"


def metric(value: float) -> dict[str, Any]:
    return {"value": value, "standard_deviation": "NaN"}


def extract_model(model_input: Path, destination: Path) -> Path:
    archives = sorted(model_input.glob("*.tar.gz")) if model_input.is_dir() else [model_input]
    if not archives:
        raise StepInputError(f"no model.tar.gz in the model input ({model_input})")
    extract_tar(archives[0], destination)
    return destination


def require_fhe_files(destination: Path) -> Path:
    for name in (artifacts.CLIENT_ZIP, artifacts.SERVER_ZIP, artifacts.MODEL_JSON, artifacts.VERSIONS_JSON):
        if not (destination / name).exists():
            raise StepInputError(f"model.tar.gz lacks {name}")
    return check_versions(destination)


def check_versions(destination: Path) -> Path:
    record = VersionsRecord.from_dict(json.loads((destination / artifacts.VERSIONS_JSON).read_text()))
    VersionsRecord.current().check_compatible(record, what="the model")
    return destination


def run_fhe_sample(model_files: Path, x: np.ndarray) -> dict[str, Any]:  # type: ignore[type-arg]
    """Keygen, encrypt, ``FHEModelServer.run``, decrypt, one sample at a time; returns outputs and sizes."""
    from concrete.ml.deployment import FHEModelClient, FHEModelServer

    with tempfile.TemporaryDirectory() as key_dir:
        client = FHEModelClient(path_dir=str(model_files), key_dir=key_dir)
        client.generate_private_and_evaluation_keys()
        evaluation_keys = client.get_serialized_evaluation_keys()
        server = FHEModelServer(path_dir=str(model_files))
        server.load()
        outputs, latencies, in_sizes, out_sizes, queries = [], [], [], [], []
        for row in x:
            query = client.quantize_encrypt_serialize(row[None, :])
            started = time.perf_counter()
            result = server.run(query, evaluation_keys)
            latencies.append(time.perf_counter() - started)
            queries.append(query)
            in_sizes.append(len(query))
            out_sizes.append(len(result))
            outputs.append(client.deserialize_decrypt_dequantize(result)[0])
        served = served_seconds_per_sample(server, queries, evaluation_keys)
    return {
        "scores": np.asarray(outputs),
        "latency_seconds": latencies,
        "served_seconds_per_sample": served,
        "evaluation_key_bytes": len(evaluation_keys),
        "input_bytes": in_sizes,
        "output_bytes": out_sizes,
    }


def served_seconds_per_sample(server: Any, queries: list[bytes], evaluation_keys: bytes) -> float:
    """Wall-clock seconds per sample evaluated as the endpoint evaluates a shard (containers/inference/engine.py):
    the keys deserialized once, one thread per core (concrete releases the GIL). What an owner's estimate uses:
    the sequential latency above also pays each sample's key deserialization, which the endpoint does not."""
    from concrete import fhe

    keys = fhe.EvaluationKeys.deserialize(evaluation_keys)
    workers = max(1, min(len(queries), os.cpu_count() or 1))
    started = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda query: server.run(query, keys), queries))
    return (time.perf_counter() - started) / len(queries)


@dataclass(frozen=True)
class BudgetCheck:
    """The accuracy budget's promise checked on the test split: the circuit's loss against the float model (the
    mean of its simulation draws, row by row) and its two-sided interval at the budget's confidence."""

    accuracy_budget: float
    confidence: float
    rows: int
    float_accuracy: float
    loss: float
    lower: float
    upper: float

    @classmethod
    def on_test_split(
        cls,
        training: dict[str, Any],
        labels: np.ndarray,  # type: ignore[type-arg]
        float_predictions: np.ndarray,  # type: ignore[type-arg]
        draws: list[np.ndarray],  # type: ignore[type-arg]
    ) -> BudgetCheck:
        recorded = training.get("budget") or {}  # models trained before the budget was recorded: the defaults
        accuracy_budget = float(recorded.get("accuracy_loss", SearchSettings.accuracy_budget))
        confidence = float(recorded.get("confidence", SearchSettings.confidence))
        losses = certification.paired_losses(labels, float_predictions, draws)
        lower, upper = certification.interval(losses, confidence)
        return cls(
            accuracy_budget=accuracy_budget,
            confidence=confidence,
            rows=len(labels),
            float_accuracy=float((float_predictions == labels).mean()),
            loss=float(losses.mean()),
            lower=lower,
            upper=upper,
        )

    @property
    def verdict(self) -> str:
        """Within the budget, above it beyond the interval (CheckQuality fails the model), or not decided."""
        if self.upper <= self.accuracy_budget:
            return "within the budget, interval included"
        if self.lower > self.accuracy_budget:
            return "above the budget beyond the interval"
        return "the interval spans the budget: the test split cannot tell"

    def metrics(self) -> dict[str, float]:
        return {
            "accuracy_float_model": self.float_accuracy,
            "accuracy_loss_vs_float": self.loss,
            "accuracy_loss_vs_float_lower": self.lower,
            "accuracy_loss_vs_float_upper": self.upper,
            "accuracy_budget": self.accuracy_budget,
        }

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "verdict": self.verdict}


def predict_classes(scores: np.ndarray) -> np.ndarray:  # type: ignore[type-arg]
    return scores.argmax(axis=1) if scores.ndim == 2 and scores.shape[1] > 1 else (scores.ravel() > 0.5).astype(int)


def evaluate(
    model_input: Path,
    train_dir: Path,
    test_dir: Path,
    output: Path,
    fhe_samples: int,
    client_output: Path | None = None,
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as scratch:
        files = extract_model(model_input, Path(scratch))
        if EnclaveModelRecord.present(files):
            return evaluate_enclave(check_versions(files), test_dir, output, client_output)
        return evaluate_fhe(require_fhe_files(files), train_dir, test_dir, output, fhe_samples, client_output)


def sha256_file(path: Path) -> str:
    with path.open("rb") as stream:
        return hashlib.file_digest(stream, "sha256").hexdigest()


def evaluate_enclave(files: Path, test_dir: Path, output: Path, client_output: Path | None) -> dict[str, Any]:
    """An enclave model (ModelKind=enclave) evaluated in clear, loaded by the enclave's own loader
    (``containers/enclave/models.py``): what is served is this float model itself, so its loss against the float
    model is nil and its served accuracy is its clear accuracy."""
    from containers.enclave.models import ModelError, load_model

    x_test, y_test = load_split(test_dir, "test")
    try:
        record, content = EnclaveModelRecord.load(files)
        model = load_model(record.format, content)
    except (EnclaveModelError, ModelError) as error:
        raise StepInputError(f"the enclave model does not load: {error}") from None
    if model.features != x_test.shape[1]:
        raise StepInputError(f"the enclave model takes {model.features} features, the test split has {x_test.shape[1]}")
    training = json.loads((files / artifacts.TRAINING_JSON).read_text())
    columns = PreprocessingRecord.load(files / artifacts.PREPROCESSING_JSON)
    started = time.perf_counter()
    predictions = predict_classes(model.predict(x_test.astype(np.float64)))
    seconds = (time.perf_counter() - started) / len(y_test)
    accuracy = float((predictions == y_test).mean())
    values = {
        "accuracy": accuracy,
        "accuracy_served": accuracy,
        "accuracy_gap_clear_vs_served": 0.0,
        "accuracy_float_model": accuracy,
        "accuracy_loss_vs_float": 0.0,
        "accuracy_loss_vs_float_lower": 0.0,
        "accuracy_loss_vs_float_upper": 0.0,
        "enclave_seconds_per_sample": seconds,  # in clear, on the Evaluate step's instance
        "model_bytes": float(len(content)),
    }
    report = {
        METRICS_GROUP: {name: metric(value) for name, value in values.items()},
        "model_kind": "enclave",
        "model_type": record.model_type,
        "model_digest": record.sha256,
        "model_format": record.format,
        "test_rows": len(y_test),
        "columns": {"left_out": columns.left_out, "id_columns": columns.id_columns, "warnings": columns.warnings},
        "settings": training.get("settings"),
    }
    output.mkdir(parents=True, exist_ok=True)
    (output / "evaluation.json").write_text(json.dumps(report, indent=2))
    if client_output is not None:
        client_output.mkdir(parents=True, exist_ok=True)
        for name in artifacts.ENCLAVE_CLIENT_ARTIFACTS:
            shutil.copyfile(files / name, client_output / name)
        # What the owner's estimate is made of (common/estimate.py): the model's pace in clear, and a record's bytes
        # as the client encrypts it (its features as float64 under AES-GCM).
        costs = {"enclave_seconds_per_sample": seconds, "input_bytes_per_sample": 8.0 * model.features}
        (client_output / artifacts.COSTS_JSON).write_text(json.dumps(costs, indent=2))
    print(json.dumps({"evaluation": values}), flush=True)
    return report


def evaluate_fhe(
    files: Path,
    train_dir: Path,
    test_dir: Path,
    output: Path,
    fhe_samples: int,
    client_output: Path | None = None,
) -> dict[str, Any]:
    from concrete.ml.common.serialization.loaders import loads

    if fhe_samples < 1:
        raise StepInputError(f"the FHE sample size must be at least 1, got {fhe_samples}")
    x_train, _ = load_split(train_dir, "train")
    x_test, y_test = load_split(test_dir, "test")
    training = json.loads((files / artifacts.TRAINING_JSON).read_text())
    columns = PreprocessingRecord.load(files / artifacts.PREPROCESSING_JSON)
    settings = TrainingSettings(**training["settings"])
    model = loads((files / artifacts.MODEL_JSON).read_text())
    # Models trained before the budget was certified have no float model of their own: their own clear model.
    float_file = files / artifacts.FLOAT_MODEL_JSON
    float_model = loads(float_file.read_text()) if float_file.exists() else model
    # Same data, same options as Train: the same circuit as server.zip, here for simulation.
    circuit = settings.compile(model, x_train)

    clear = clear_predictions(model, x_test)
    quantized = model.predict(x_test, fhe="disable")
    draws = simulated_draws(model, settings, x_test)
    simulated = draws[0]
    budget = BudgetCheck.on_test_split(training, y_test, clear_predictions(float_model, x_test), draws)

    sample = x_test[: min(fhe_samples, len(x_test))]
    fhe = run_fhe_sample(files, sample)
    model_digest = sha256_file(files / artifacts.SERVER_ZIP)  # what the endpoint serves
    if client_output is not None:
        client_output.mkdir(parents=True, exist_ok=True)
        for name in artifacts.CLIENT_ARTIFACTS:
            shutil.copyfile(files / name, client_output / name)
    fhe_pred = predict_classes(fhe["scores"])
    n = len(sample)
    accuracy_clear = float((clear == y_test).mean())
    accuracy_simulated = float(np.mean([(draw == y_test).mean() for draw in draws]))
    values = {
        "accuracy": accuracy_clear,
        "accuracy_quantized_clear": float((quantized == y_test).mean()),
        "accuracy_fhe_simulation": accuracy_simulated,
        "accuracy_fhe": float((fhe_pred == y_test[:n]).mean()),
        "accuracy_gap_clear_vs_fhe": accuracy_clear - accuracy_simulated,
        # What CheckQuality gates, for either kind of model: the accuracy of what is served and its gap to clear.
        "accuracy_served": accuracy_simulated,
        "accuracy_gap_clear_vs_served": accuracy_clear - accuracy_simulated,
        "fhe_agreement_with_simulation": float((fhe_pred == simulated[:n]).mean()),
        "fhe_latency_seconds_per_sample": float(np.mean(fhe["latency_seconds"])),
        "fhe_seconds_per_sample_served": float(fhe["served_seconds_per_sample"]),
        "evaluation_key_bytes": float(fhe["evaluation_key_bytes"]),
        "input_ciphertext_bytes_per_sample": float(np.mean(fhe["input_bytes"])),
        "output_ciphertext_bytes_per_sample": float(np.mean(fhe["output_bytes"])),
        "programmable_bootstrap_count": float(circuit.statistics.get("programmable_bootstrap_count", 0)),
        **budget.metrics(),
    }
    report = {
        METRICS_GROUP: {name: metric(value) for name, value in values.items()},
        "model_kind": "fhe",
        "model_type": settings.model_type,
        "model_digest": model_digest,
        "test_rows": len(y_test),
        "fhe_sample_size": n,
        # What the model does not see and why, and what ML ops kept despite the identifier check.
        "columns": {"left_out": columns.left_out, "id_columns": columns.id_columns, "warnings": columns.warnings},
        # The levers of the circuit evaluated here, and how the Train step's search chose them (None: no search).
        "levers": levers_of(settings),
        "search": SearchResult.summary(training["search"]) if training.get("search") else None,
        "budget": budget.to_dict(),
    }
    output.mkdir(parents=True, exist_ok=True)
    (output / "evaluation.json").write_text(json.dumps(report, indent=2))
    if client_output is not None:
        costs = ModelCosts.from_metrics(values)
        (client_output / artifacts.COSTS_JSON).write_text(json.dumps(costs.to_metrics(), indent=2))
    print(json.dumps({"evaluation": values}), flush=True)
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="evaluate", description=__doc__)
    parser.add_argument("--model", default="/opt/ml/processing/model")
    parser.add_argument("--train", default="/opt/ml/processing/train")
    parser.add_argument("--test", default="/opt/ml/processing/test")
    parser.add_argument("--output", default="/opt/ml/processing/evaluation")
    parser.add_argument("--client-output", default="/opt/ml/processing/client")
    parser.add_argument("--fhe-samples", type=int, default=5, help="test rows run in real FHE (default 5)")
    args = parser.parse_args(argv)
    run_entry_point(
        "processing",
        lambda: evaluate(
            container_path(args.model),
            container_path(args.train),
            container_path(args.test),
            container_path(args.output),
            args.fhe_samples,
            container_path(args.client_output),
        ),
    )


if __name__ == "__main__":
    main()
