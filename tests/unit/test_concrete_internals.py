"""The adapter over Concrete ML's internals, against the installed concrete-ml on tiny models: a network's rounding
set and kept through ``model.json``, each family's float model, and the refusal of a release it was not written
for (with the pins that must agree with it)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import tomllib

from containers.training import concrete_internals
from containers.training.concrete_internals import ConcreteVersionError, check_version
from containers.training.training_settings import TrainingSettings

ROOT = Path(__file__).resolve().parents[2]


def test_another_concrete_ml_release_is_refused_naming_both_versions() -> None:
    with pytest.raises(ConcreteVersionError) as refused:
        check_version("1.10.0")
    assert "concrete-ml 1.10.0 is installed" in str(refused.value)
    assert f"written for concrete-ml {concrete_internals.WRITTEN_FOR}.x" in str(refused.value)
    with pytest.raises(ConcreteVersionError):
        check_version("2.9.0")
    check_version(f"{concrete_internals.WRITTEN_FOR}.7")  # a patch release of the series is accepted
    check_version(concrete_internals.installed_version())  # what importing the module checked


def test_the_pinned_concrete_ml_is_the_release_the_adapter_was_written_for() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    pins = [*extras["fhe"], *(ROOT / "containers/requirements/fhe.txt").read_text().splitlines()]
    pins += (ROOT / "constraints.txt").read_text().splitlines()
    versions = {match[1] for pin in pins if (match := re.fullmatch(r"concrete-ml==([\d.]+)", pin.strip()))}
    assert len(versions) == 1, pins
    check_version(versions.pop())


@pytest.fixture(scope="module")
def data() -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
    from sklearn.datasets import load_breast_cancer

    x, y = load_breast_cancer(return_X_y=True)
    x = x[:, :6]
    x = (2 * (x - x.min(axis=0)) / (x.max(axis=0) - x.min(axis=0)) - 1).astype(np.float32)
    return x[:160], y[:160].astype(np.int64)


@pytest.fixture(scope="module")
def network(data: tuple[npt.NDArray[Any], npt.NDArray[Any]]) -> tuple[TrainingSettings, Any]:
    settings = TrainingSettings(
        model_type="neural_network", module__n_hidden_neurons_multiplier=0.5, max_epochs=20, lr=0.05, p_error=0.05
    )
    model = settings.build_model()
    model.fit(*data)
    return settings, model


def _bootstraps(settings: TrainingSettings, model: Any, x: npt.NDArray[Any]) -> int:
    return int(settings.compile(model, x).statistics["programmable_bootstrap_count"])


def test_a_networks_rounding_is_set_changes_its_circuit_and_survives_model_json(
    network: tuple[TrainingSettings, Any], data: tuple[npt.NDArray[Any], npt.NDArray[Any]]
) -> None:
    from concrete.ml.common.serialization.loaders import loads

    settings, model = network
    x = data[0]
    counts = {}
    for rounding in ("exact", "approximate"):
        chosen = TrainingSettings(**{**settings.to_dict(), "rounding": rounding})
        counts[rounding] = _bootstraps(chosen, model, x)  # compile sets the rounding through the adapter
        removed, method = concrete_internals.activation_rounding(model)
        assert removed > 0 and method == rounding
        reloaded = loads(model.dumps())  # as Evaluate loads model.json
        assert concrete_internals.activation_rounding(reloaded) == (removed, rounding)
        assert _bootstraps(chosen, reloaded, x) == counts[rounding]
    # Exact rounding takes one bootstrap per removed bit on top of each activation's own.
    assert 0 < counts["approximate"] < counts["exact"]


def test_only_a_fitted_network_has_roundings_to_set(data: tuple[npt.NDArray[Any], npt.NDArray[Any]]) -> None:
    tree = TrainingSettings(model_type="decision_tree", n_bits=3, max_depth=2).build_model()
    with pytest.raises(TypeError, match="not a fitted Concrete ML built-in network"):
        concrete_internals.set_rounding(tree, approximate=True)


@pytest.mark.parametrize("model_type", ["logistic_regression", "decision_tree", "neural_network"])
def test_clear_predictions_are_each_familys_float_model(
    model_type: str, network: tuple[TrainingSettings, Any], data: tuple[npt.NDArray[Any], npt.NDArray[Any]]
) -> None:
    x, y = data
    if model_type == "neural_network":
        model = network[1]
    else:
        model = TrainingSettings(model_type=model_type, n_bits=6, max_depth=3).build_model()
        model.fit(x, y)
    clear = concrete_internals.clear_predictions(model, x)
    quantized = model.predict(x, fhe="disable")
    if model_type == "logistic_regression":  # the float scikit-learn model on float inputs
        assert (clear == model.sklearn_model.predict(x)).all()
    if model_type == "decision_tree":  # the float tree on the inputs quantized as in training
        assert (clear == model.sklearn_model.predict(model.quantize_input(x))).all()
        assert len(set(model.sklearn_model.predict(x))) == 1  # float inputs all fall on one side of each split
    if model_type == "neural_network":  # trained quantization-aware: its quantized clear predictions
        assert (clear == quantized).all()
    assert (clear == quantized).mean() >= 0.9 and (clear == y).mean() > 0.8


def test_compression_is_switched_for_the_block_only() -> None:
    before = {name: os.environ.get(name) for name in ("USE_KEY_COMPRESSION", "USE_INPUT_COMPRESSION")}
    with concrete_internals.compression(evaluation_keys=False, input_ciphertexts=True):
        assert (os.environ["USE_KEY_COMPRESSION"], os.environ["USE_INPUT_COMPRESSION"]) == ("0", "1")
    assert {name: os.environ.get(name) for name in before} == before
