"""Train and Evaluate for every model type, on a small slice of breast cancer, with real FHE on one sample."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from common import artifacts
from containers.training.train import train
from containers.training.training_settings import TrainingSettings
from tests.unit.conftest import evaluated

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
def splits(breast_cancer_splits: Path) -> Path:
    return breast_cancer_splits


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

    report = _evaluated(model_dir, splits, tmp_path)
    metrics = {k: v["value"] for k, v in report["multiclass_classification_metrics"].items()}
    assert metrics["accuracy_fhe_simulation"] > 0.8
    # What CheckQuality gates for either kind, and the digest Register records: here the circuit's.
    assert metrics["accuracy_served"] == metrics["accuracy_fhe_simulation"] and report["model_kind"] == "fhe"
    assert report["model_digest"] == hashlib.sha256((model_dir / artifacts.SERVER_ZIP).read_bytes()).hexdigest()
    # The clear reference is right for this model type: as accurate as its quantized form, give or take the
    # quantization (a tree's float model fed float inputs would predict one class: about 0.63 here).
    assert metrics["accuracy"] > 0.8
    assert abs(metrics["accuracy"] - metrics["accuracy_quantized_clear"]) <= 0.05, metrics
    assert metrics["fhe_agreement_with_simulation"] == 1.0
    assert metrics["evaluation_key_bytes"] > 0 and metrics["fhe_latency_seconds_per_sample"] > 0
    assert (tmp_path / "evaluation" / "evaluation.json").exists()
    if model_type != "logistic_regression":
        assert metrics["programmable_bootstrap_count"] > 0


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


def test_train_searches_the_unset_levers_certifies_the_choice_and_evaluate_checks_it(
    splits: Path, tmp_path: Path
) -> None:
    """One real search inside Train (the policy's decisions are test_search_policy.py's, the certification's
    statistics test_certification.py's): every candidate is a real circuit, fitted with the pinned depth, simulated
    on the validation split and priced at a measured bootstrap; the ones tested on the certification rows are the
    Pareto front of those within the budget, in order, stopping at the first failure; Train fits the cheapest
    certified (or the given levers) and the given levers' float model; Evaluate reports the levers, the
    certification and the test split's loss against that float model with its interval."""
    from containers.training.search import SearchSettings
    from containers.training.search_policy import StopReason, stop_text

    raw = {"model_type": "decision_tree", "max_depth": "2", "n_bits": "0", "rounding": "auto"}
    given, pinned = TrainingSettings.from_hyperparameters(raw), TrainingSettings.given_levers(raw)
    assert pinned == {"max_depth"} and given.max_depth == 2 and given.n_bits == 0
    budget = 0.05
    model_dir = tmp_path / "model"
    options = SearchSettings(accuracy_budget=budget, seconds=600, confidence=0.9)
    summary = train(given, splits / "train", splits / "preprocessing", model_dir, options, pinned)
    record = json.loads((model_dir / artifacts.TRAINING_JSON).read_text())
    searched = record["search"]
    assert searched["chosen_levers"] == summary["search"]["chosen_levers"]
    assert searched["stop_reason"] == StopReason.NO_SAVING.value
    assert searched["stopped"] == stop_text(StopReason.NO_SAVING, chose=True)
    assert record["budget"] == {"accuracy_loss": budget, "confidence": 0.9}

    candidates = searched["candidates"]
    assert {c["levers"]["max_depth"] for c in candidates} == {2}
    assert {c["levers"]["n_bits"] for c in candidates} == set(searched["space"]["n_bits"])
    assert candidates[0]["levers"] == {"n_bits": given.effective_n_bits, "max_depth": 2}
    assert searched["path"][0] == 0 and searched["path"][-1] == searched["estimated"]
    assert searched["pace"]["seconds_per_complexity"] > 0
    for candidate in candidates:
        loss = searched["float_accuracy"] - candidate["validation_accuracy"]
        assert candidate["within_budget"] == (loss <= budget + 1e-9)
        assert candidate["validation_bound"] >= loss - 1e-9
        assert candidate["bootstraps"] > 0 and candidate["expected_seconds_per_sample"] > 0

    certified = searched["certification"]
    tested = certified["tested"]
    assert certified["rows"] > 0 and certified["confidence"] == 0.9
    assert all(t["certified"] for t in tested[:-1])  # fixed sequence: only the last tested may have failed
    assert all(candidates[t["candidate"]]["within_budget"] for t in tested)
    for t in [*tested, certified["given"]]:
        assert t["bound"] >= t["loss"] and t["certified"] == (t["bound"] <= budget + 1e-3)
    assert certified["given"]["candidate"] == 0
    if searched["chosen"] is None:
        assert not any(t["certified"] for t in tested) and "the given levers are kept" in searched["certified"]
        expected = {"n_bits": given.effective_n_bits, "max_depth": 2}
    else:
        chosen = candidates[searched["chosen"]]
        costs = [candidates[t["candidate"]]["expected_seconds_per_sample"] for t in tested if t["certified"]]
        assert chosen["expected_seconds_per_sample"] == min(costs)
        assert searched["certified"].startswith("certified: loses at most")
        expected = chosen["levers"]

    trained = TrainingSettings(**record["settings"])
    assert {"n_bits": trained.effective_n_bits, "max_depth": trained.max_depth} == expected
    assert (model_dir / artifacts.FLOAT_MODEL_JSON).stat().st_size > 0
    report = _evaluated(model_dir, splits, tmp_path)
    assert report["levers"] == expected
    assert report["search"]["pinned"] == sorted(pinned)
    assert report["search"]["stop_reason"] == StopReason.NO_SAVING.value
    assert report["search"]["certification_rows"] == certified["rows"]
    assert report["search"]["certified_loss"]["bound"] >= report["search"]["certified_loss"]["loss"]
    checked = report["budget"]
    assert (checked["accuracy_budget"], checked["confidence"], checked["rows"]) == (budget, 0.9, 143)
    assert checked["lower"] <= checked["loss"] <= checked["upper"]
    metrics = {k: v["value"] for k, v in report["multiclass_classification_metrics"].items()}
    assert metrics["accuracy_loss_vs_float"] == pytest.approx(
        metrics["accuracy_float_model"] - metrics["accuracy_fhe_simulation"]
    )


def test_the_search_settings_are_checked_by_name() -> None:
    from containers.contract import StepInputError
    from containers.training.search import SearchSettings

    options, rest = SearchSettings.from_hyperparameters(
        {"accuracy_budget": "0.02", "search_seconds": "0", "n_bits": "4"}
    )
    assert (options.accuracy_budget, options.enabled, rest) == (0.02, False, {"n_bits": "4"})
    with pytest.raises(StepInputError, match="accuracy budget must be in"):
        SearchSettings.from_hyperparameters({"accuracy_budget": "2"})
    with pytest.raises(StepInputError, match="search_seconds='soon' is not a number"):
        SearchSettings.from_hyperparameters({"search_seconds": "soon"})
    # Unset levers (the pipeline's defaults) are not pinned; pruning's 0 is a choice, its -1 is unset.
    raw = {"n_bits": "0", "module__n_prune_neurons_percentage": "0", "rounding": "auto", "p_error": "0.0"}
    assert TrainingSettings.given_levers(raw) == {"module__n_prune_neurons_percentage"}
    assert TrainingSettings.given_levers({"module__n_prune_neurons_percentage": "-1.0", "NBits": ""}) == set()


def test_a_network_whose_budget_the_rows_cannot_certify_gets_the_float_models_exact_circuit(
    splits: Path, tmp_path: Path
) -> None:
    """Breast cancer's 128 certification rows cannot certify one point for any circuit that may err (a one-point
    budget needs some 400 rows even without a single loss), so the search trains the given network compiled to
    compute its float model itself, certified by construction; the record says how many rows the given levers would
    need, and on the test split the circuit loses nothing against the float model."""
    from containers.training.search import EXACT_LEVERS, SearchSettings

    given = TrainingSettings(model_type="neural_network", max_epochs=10)
    model_dir = tmp_path / "model"
    options = SearchSettings(accuracy_budget=0.01, seconds=1)  # the given levers, then time is up
    train(given, splits / "train", splits / "preprocessing", model_dir, options, frozenset())
    searched = json.loads((model_dir / artifacts.TRAINING_JSON).read_text())["search"]
    certified = searched["certification"]
    exact = certified["exact"]
    assert certified["rows"] < 400 and not certified["given"]["certified"]
    assert exact["by_construction"] and exact["certified"] and exact["bound"] < 1e-6
    assert searched["chosen"] == exact["candidate"]
    assert searched["candidates"][exact["candidate"]]["levers"] == {
        **searched["candidates"][0]["levers"],
        **EXACT_LEVERS["neural_network"],
    }
    assert searched["certified"].startswith("certified by construction")
    assert "rows like these would certify them" in searched["certified"] or "no number of rows" in searched["certified"]

    report = _evaluated(model_dir, splits, tmp_path)
    assert report["budget"]["loss"] == 0.0 and report["budget"]["lower"] <= 0.0 <= report["budget"]["upper"]
    assert report["search"]["certified_loss"]["by_construction"]


def _evaluated(model_dir: Path, splits: Path, tmp_path: Path) -> dict[str, Any]:
    """The Evaluate step's report on a trained model, packed as SageMaker hands it over."""
    return evaluated(model_dir, splits, tmp_path)
