"""The one place the product reaches into Concrete ML beyond its documented API, for the release it was written for.

Training needs three things Concrete ML does not offer as API, and each depends on how a release is built inside:

- **A network's rounding**: Concrete ML inserts the accumulator roundings of its built-in network itself and makes
  them exact; the choice of ``approximate`` is offered only through ``compile_torch_model``. It is set here on the
  fitted network's quantized operations (``quantized_module_.quant_layers_dict``, ``rounding_threshold_bits``).
- **Compression**: Concrete ML compresses evaluation keys and input ciphertexts whatever the compile configuration
  says, unless the environment variables ``USE_KEY_COMPRESSION`` / ``USE_INPUT_COMPRESSION`` say otherwise (read
  at compile time in ``concrete.ml.sklearn.base`` and ``concrete.ml.quantization.quantized_module``).
- **The float model** of each estimator family, told apart by the mixins of ``concrete.ml.sklearn.base``.

A new Concrete ML release may move any of these, and the product would then train other circuits than it says
(a rounding silently exact, compression silently on) rather than fail. So importing this module checks the
installed release against ``WRITTEN_FOR`` and refuses another, naming both; the release is pinned in
``pyproject.toml`` and ``containers/requirements/fhe.txt`` (tests/unit/test_concrete_internals.py checks the pins).
No other module touches Concrete ML's internals.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from typing import Any

import numpy as np
import numpy.typing as npt

from common.environment import scoped_environment

WRITTEN_FOR = "1.9"  # the concrete-ml release series (major.minor) whose internals this module uses


class ConcreteVersionError(RuntimeError):
    """The installed concrete-ml is not the release this module's use of its internals was written for."""


def check_version(installed: str) -> None:
    """Refuse a concrete-ml release outside the ``WRITTEN_FOR`` series, naming both."""
    if installed.split(".")[:2] != WRITTEN_FOR.split("."):
        raise ConcreteVersionError(
            f"concrete-ml {installed} is installed, but the training's use of concrete-ml internals "
            f"(containers/training/concrete_internals.py) was written for concrete-ml {WRITTEN_FOR}.x: install "
            f"concrete-ml {WRITTEN_FOR}.x as pinned, or check each internal against {installed} and raise WRITTEN_FOR"
        )


def installed_version() -> str:
    return metadata.version("concrete-ml")


check_version(installed_version())


def set_rounding(model: Any, *, approximate: bool) -> None:
    """Make the accumulator roundings of a fitted built-in network approximate, or exact (Concrete ML's own).

    The choice is stored on the quantized operations, so ``model.json`` keeps it and a model loaded from it
    compiles to the same circuit.
    """
    from concrete import fhe

    exactness = fhe.Exactness.APPROXIMATE if approximate else fhe.Exactness.EXACT
    for operation in _quantized_operations(model):
        rounding = getattr(operation, "rounding_threshold_bits", None)
        if isinstance(rounding, dict):
            rounding = rounding.get("n_bits")
        if isinstance(rounding, int):
            operation.rounding_threshold_bits = {"n_bits": rounding, "method": exactness}


def activation_rounding(model: Any) -> tuple[int, str]:
    """Of a fitted built-in network: the bits removed before its first activation, and how (``exact`` or
    ``approximate``); ``(0, "exact")`` where nothing is rounded."""
    for operation in _quantized_operations(model):
        removed = (getattr(operation, "lsbs_to_remove", None) or {}).get("matmul", 0)
        if removed:
            rounding = operation.rounding_threshold_bits
            method = rounding.get("method") if isinstance(rounding, dict) else None
            return int(removed), str(getattr(method, "value", method or "exact"))
    return 0, "exact"


def _quantized_operations(model: Any) -> list[Any]:
    layers = getattr(getattr(model, "quantized_module_", None), "quant_layers_dict", None)
    if layers is None:
        raise TypeError(f"{type(model).__name__} is not a fitted Concrete ML built-in network (no quantized module)")
    return [operation for _, operation in layers.values()]


@contextmanager
def compression(evaluation_keys: bool, input_ciphertexts: bool) -> Iterator[None]:
    """Within: Concrete ML compiles with these compressions (its only switch); afterwards as before."""
    switches = {
        "USE_KEY_COMPRESSION": "1" if evaluation_keys else "0",
        "USE_INPUT_COMPRESSION": "1" if input_ciphertexts else "0",
    }
    with scoped_environment(switches):
        yield


def clear_predictions(model: Any, x: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """The model outside FHE and before output quantization: the reference the FHE gap is measured against, each
    model type by what its float model really is.

    - Linear models: the float scikit-learn model, on float inputs (Concrete ML quantizes it after training).
    - Trees and boosted trees: Concrete ML fits the scikit-learn or XGBoost model on the quantized inputs, so
      its thresholds are in that integer space; on float inputs every sample falls on one side of every split.
      The float model is run on the inputs quantized as in training.
    - Networks are trained quantization-aware: they have no float twin, their quantized clear predictions are
      the reference.
    """
    from concrete.ml.sklearn.base import BaseTreeEstimatorMixin, SklearnLinearModelMixin

    if isinstance(model, BaseTreeEstimatorMixin):
        return np.asarray(model.sklearn_model.predict(model.quantize_input(x)))
    if isinstance(model, SklearnLinearModelMixin) and model.sklearn_model is not None:
        return np.asarray(model.sklearn_model.predict(x))
    return np.asarray(model.predict(x, fhe="disable"))
