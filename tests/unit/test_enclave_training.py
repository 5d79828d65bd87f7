"""Train and Evaluate for enclave models (ModelKind=enclave): float models saved as data the enclave loads
(XGBoost JSON, ONNX), evaluated in clear by the enclave's own loader, with the digest Register records."""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from common import artifacts
from common.enclave_model import MODEL_FILES, ONNX, XGBOOST_JSON, EnclaveModelError, EnclaveModelRecord
from containers.contract import StepInputError
from containers.enclave.models import load_model
from containers.training.data import builtin_dataset_csv
from containers.training.enclave_training import EnclaveTrainingSettings
from containers.training.evaluate import evaluate
from containers.training.preprocess import preprocess
from containers.training.train import load_split, train_enclave

# What the pipeline passes for a run that sets only ModelKind and ModelType (pipelines/pipeline.py's defaults).
PIPELINE_DEFAULTS = {
    "n_bits": "0",
    "max_depth": "0",
    "n_estimators": "0",
    "module__n_w_bits": "0",
    "module__n_a_bits": "0",
    "module__n_hidden_neurons_multiplier": "0.0",
    "module__n_prune_neurons_percentage": "-1.0",
    "module__n_accum_bits": "32",
    "rounding": "auto",
    "p_error": "0.0",
}


@pytest.fixture(scope="module")
def splits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    source = builtin_dataset_csv("breast_cancer", root / "in" / "bc.csv")
    preprocess(source.parent, root / "out", "label", 0.25, 3)
    return root / "out"


def _evaluated(model_dir: Path, splits: Path, tmp_path: Path) -> dict[str, Any]:
    model_input = tmp_path / "model-input"
    model_input.mkdir()
    with tarfile.open(model_input / "model.tar.gz", "w:gz") as tar:
        for path in model_dir.iterdir():
            tar.add(path, arcname=path.name)
    return evaluate(model_input, splits / "train", splits / "test", tmp_path / "evaluation", 1, tmp_path / "client")


@pytest.mark.parametrize(
    ("model_type", "model_format", "levers"),
    [("xgboost", XGBOOST_JSON, {"n_estimators": "40", "max_depth": "3"}), ("logistic_regression", ONNX, {})],
)
def test_an_enclave_model_is_trained_saved_as_data_and_evaluated_in_clear(
    model_type: str, model_format: str, levers: dict[str, str], splits: Path, tmp_path: Path
) -> None:
    settings = EnclaveTrainingSettings.from_hyperparameters({**PIPELINE_DEFAULTS, "model_type": model_type, **levers})
    model_dir = tmp_path / "model"
    summary = train_enclave(settings, splits / "train", splits / "preprocessing", model_dir)
    assert summary["train_accuracy_clear"] > 0.9 and summary["model_kind"] == "enclave"
    record, content = EnclaveModelRecord.load(model_dir)
    assert record.format == model_format and (model_dir / MODEL_FILES[model_format]).exists()
    assert record.sha256 == hashlib.sha256(content).hexdigest() and record.features == 30
    assert not (model_dir / artifacts.SERVER_ZIP).exists() and not list(model_dir.glob("*.pkl"))
    if model_type == "xgboost":
        assert json.loads(content)["learner"]["gradient_booster"]["model"]["gbtree_model_param"]["num_trees"] == "40"

    report = _evaluated(model_dir, splits, tmp_path)
    metrics = {k: v["value"] for k, v in report["multiclass_classification_metrics"].items()}
    assert report["model_kind"] == "enclave" and report["model_digest"] == record.sha256
    assert metrics["accuracy"] > 0.9 and metrics["accuracy_served"] == metrics["accuracy"]
    assert metrics["accuracy_gap_clear_vs_served"] == 0.0 and metrics["accuracy_loss_vs_float_lower"] == 0.0
    # The evaluation is the enclave's own loader's answer on the test split.
    x_test, y_test = load_split(splits / "test", "test")
    enclave = load_model(record.format, content)
    scores = enclave.predict(x_test.astype(np.float64))
    predicted = scores.argmax(axis=1) if scores.ndim == 2 else (scores > 0.5).astype(int)
    assert metrics["accuracy"] == pytest.approx(float((predicted == y_test).mean()))
    # Owners get the record (what serves their data, by digest), never the model.
    published = sorted(path.name for path in (tmp_path / "client").iterdir())
    assert published == sorted([*artifacts.ENCLAVE_CLIENT_ARTIFACTS, artifacts.COSTS_JSON])
    # And what the owner's estimate is made of: the model's pace in clear, a record's encrypted bytes.
    costs = json.loads((tmp_path / "client" / artifacts.COSTS_JSON).read_text())
    assert costs["enclave_seconds_per_sample"] == metrics["enclave_seconds_per_sample"] > 0
    assert costs["input_bytes_per_sample"] == 8.0 * x_test.shape[1]


def test_the_fhe_levers_are_refused_for_an_enclave_model_by_name() -> None:
    with pytest.raises(StepInputError, match="n_bits='6' is an FHE lever"):
        EnclaveTrainingSettings.from_hyperparameters({**PIPELINE_DEFAULTS, "model_type": "xgboost", "n_bits": "6"})
    with pytest.raises(StepInputError, match="not served in the enclave; choose one of xgboost"):
        EnclaveTrainingSettings.from_hyperparameters({**PIPELINE_DEFAULTS, "model_type": "neural_network"})
    with pytest.raises(StepInputError, match="n_estimators must be a whole number"):
        EnclaveTrainingSettings.from_hyperparameters({"model_type": "xgboost", "n_estimators": "2.5"})
    with pytest.raises(StepInputError, match="unknown hyperparameter 'learning_rate'"):
        EnclaveTrainingSettings.from_hyperparameters({"model_type": "xgboost", "learning_rate": "0.1"})
    defaults = EnclaveTrainingSettings.from_hyperparameters({**PIPELINE_DEFAULTS, "model_type": "xgboost"})
    assert defaults.effective_n_estimators == 500  # what FHE cannot carry


def test_a_model_file_that_is_not_the_recorded_one_is_refused(splits: Path, tmp_path: Path) -> None:
    settings = EnclaveTrainingSettings(model_type="xgboost", n_estimators=3, max_depth=2)
    model_dir = tmp_path / "model"
    train_enclave(settings, splits / "train", splits / "preprocessing", model_dir)
    path = model_dir / MODEL_FILES[XGBOOST_JSON]
    path.write_bytes(path.read_bytes().replace(b'"num_trees":"3"', b'"num_trees":"2"'))
    with pytest.raises(EnclaveModelError, match="SHA-256 differs"):
        EnclaveModelRecord.load(model_dir)
    with pytest.raises(StepInputError, match="the enclave model does not load"):
        _evaluated(model_dir, splits, tmp_path)
