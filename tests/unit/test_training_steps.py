"""Train and Evaluate for every model type, on a small slice of breast cancer, with real FHE on one sample."""

from __future__ import annotations

import json
import tarfile
from dataclasses import replace
from pathlib import Path

import pytest

from common import artifacts
from containers.training.data import builtin_dataset_csv
from containers.training.evaluate import evaluate
from containers.training.models import TrainingSettings
from containers.training.preprocess import preprocess
from containers.training.train import train

SMALL = {
    "logistic_regression": TrainingSettings(model_type="logistic_regression"),
    "decision_tree": TrainingSettings(model_type="decision_tree", n_bits=3, max_depth=2),
    "xgboost": TrainingSettings(model_type="xgboost", n_bits=3, max_depth=2, n_estimators=2),
    "neural_network": TrainingSettings(
        model_type="neural_network",
        module__n_layers=2,
        module__n_w_bits=3,
        module__n_a_bits=3,
        module__n_accum_bits=8,
        module__n_hidden_neurons_multiplier=1,
        max_epochs=30,
        lr=0.05,
        # Exact and all but error-free, so that real FHE must equal the simulation row for row; the tuned
        # defaults draw their errors at random (test_approximate_rounding_... covers their circuit).
        rounding="exact",
        p_error=2.0**-40,
    ),
}


@pytest.fixture(scope="module")
def splits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    source = builtin_dataset_csv("breast_cancer", root / "in" / "bc.csv")
    preprocess(source.parent, root / "out", "label", 0.25, 3)
    return root / "out"


@pytest.mark.parametrize("model_type", list(SMALL))
def test_train_then_evaluate(model_type: str, splits: Path, tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    summary = train(SMALL[model_type], splits / "train", splits / "preprocessing", model_dir)
    assert summary["train_accuracy_clear"] > 0.8
    for name in (
        artifacts.CLIENT_ZIP,
        artifacts.SERVER_ZIP,
        artifacts.MODEL_JSON,
        artifacts.PREPROCESSING_JSON,
        artifacts.VERSIONS_JSON,
        artifacts.TRAINING_JSON,
    ):
        assert (model_dir / name).stat().st_size > 0, name
    versions = json.loads((model_dir / artifacts.VERSIONS_JSON).read_text())
    assert versions["concrete_ml"] == "1.9.0"

    model_input = tmp_path / "model-input"
    model_input.mkdir()
    with tarfile.open(model_input / "model.tar.gz", "w:gz") as tar:
        for path in model_dir.iterdir():
            tar.add(path, arcname=path.name)
    report = evaluate(model_input, splits / "train", splits / "test", tmp_path / "evaluation", fhe_samples=1)
    metrics = {k: v["value"] for k, v in report["multiclass_classification_metrics"].items()}
    assert metrics["accuracy_fhe_simulation"] > 0.8
    # The clear reference is right for this model type: as accurate as its quantized form, give or take the
    # quantization (a tree's float model fed float inputs would predict one class: about 0.63 here).
    assert metrics["accuracy"] > 0.8
    assert abs(metrics["accuracy"] - metrics["accuracy_quantized_clear"]) <= 0.05, metrics
    assert metrics["fhe_agreement_with_simulation"] == 1.0
    assert metrics["evaluation_key_bytes"] > 0 and metrics["fhe_latency_seconds_per_sample"] > 0
    assert (tmp_path / "evaluation" / "evaluation.json").exists()
    if model_type != "logistic_regression":
        assert metrics["programmable_bootstrap_count"] > 0


def test_approximate_rounding_needs_fewer_bootstraps_and_survives_model_json(splits: Path, tmp_path: Path) -> None:
    """The rounding lever changes the circuit Train compiles, and Evaluate's reload compiles the same one."""
    from concrete.ml.common.serialization.loaders import loads

    from containers.training.train import load_split

    network = {**SMALL["neural_network"].to_dict(), "module__n_accum_bits": 32, "p_error": 0.05}
    counts = {}
    for rounding in ("exact", "approximate"):
        settings = TrainingSettings(**{**network, "rounding": rounding})
        model_dir = tmp_path / rounding
        summary = train(settings, splits / "train", splits / "preprocessing", model_dir)
        counts[rounding] = summary["circuit"]["programmable_bootstrap_count"]
        reloaded = loads((model_dir / artifacts.MODEL_JSON).read_text())
        x_train, _ = load_split(splits / "train", "train")
        again = settings.compile(reloaded, x_train).statistics["programmable_bootstrap_count"]
        assert again == counts[rounding], rounding
    # Exact rounding takes one bootstrap per removed bit on top of each activation's own.
    assert 0 < counts["approximate"] < counts["exact"]


def test_an_unknown_rounding_is_refused_by_name() -> None:
    from containers.contract import StepInputError

    with pytest.raises(StepInputError, match="unknown rounding 'fast'"):
        TrainingSettings.from_hyperparameters({"model_type": "neural_network", "rounding": "fast"})


def test_the_compression_hyperparameters_switch_compression(splits: Path) -> None:
    """Concrete ML compresses whatever the configuration says unless told otherwise; the levers must tell it."""
    from containers.training.train import load_split

    x_train, _ = load_split(splits / "train", "train")
    sizes = {}
    for compress in (True, False):
        settings = replace(
            SMALL["decision_tree"], compress_evaluation_keys=compress, compress_input_ciphertexts=compress
        )
        model = settings.build_model()
        model.fit(x_train, load_split(splits / "train", "train")[1])
        circuit = settings.compile(model, x_train)
        circuit.keygen()
        encrypted = circuit.encrypt(model.quantize_input(x_train[:1]))
        sizes[compress] = (len(circuit.keys.evaluation.serialize()), len(encrypted.serialize()))
    assert sizes[True][0] < sizes[False][0] and sizes[True][1] < sizes[False][1], sizes
