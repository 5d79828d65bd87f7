"""What ML ops set for a training: the model type (one of the quantized Concrete ML models the product trains)
and its levers, and how those settings build and compile the model.

Every lever arrives as a SageMaker hyperparameter (a string); ``TrainingSettings.from_hyperparameters``
checks names, types and ranges and says which one is wrong.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from containers.contract import StepInputError
from containers.training import concrete_internals

MODEL_TYPES = ("logistic_regression", "decision_tree", "xgboost", "neural_network")

# Reasonable FHE-friendly defaults per model type; 0 / empty values from the pipeline mean "use these".
_DEFAULT_N_BITS = {"logistic_regression": 8, "decision_tree": 5, "xgboost": 5}
# A 5% error probability per bootstrap lets the optimizer pick much smaller crypto parameters; for a network
# whose rounded accumulators feed 4-bit activations it costs under a point of accuracy
# (docs/benchmarks.md). Other model types keep Concrete's own default.
_DEFAULT_P_ERROR = {"neural_network": 0.05}
# How a network's accumulators are rounded down to the activation's bit width before each activation.
# "exact" costs one bootstrap per removed bit per neuron; "approximate" folds the rounding into the
# activation's own bootstrap (one per neuron), at the price of an occasional off-by-one.
ROUNDING_METHODS = ("approximate", "exact")
# The value that leaves a lever unset: the Train step's lever search chooses it (or, with the search off, the
# default below applies). An empty value is unset too. Pruning's 0 is a choice ("none"), so its unset is -1.
UNSET_VALUES: dict[str, float | str] = {
    "n_bits": 0,
    "p_error": 0,
    "max_depth": 0,
    "n_estimators": 0,
    "module__n_w_bits": 0,
    "module__n_a_bits": 0,
    "module__n_hidden_neurons_multiplier": 0,
    "module__n_prune_neurons_percentage": -1,
    "rounding": "auto",
}


@dataclass(frozen=True)
class TrainingSettings:
    model_type: str = "logistic_regression"
    n_bits: int = 0
    p_error: float = 0.0
    compress_evaluation_keys: bool = True
    compress_input_ciphertexts: bool = True
    max_depth: int = 4
    n_estimators: int = 10
    max_epochs: int = 30
    lr: float = 0.01
    module__n_layers: int = 2
    module__n_w_bits: int = 4
    module__n_a_bits: int = 4
    # 32 leaves the accumulators unbounded: a bound makes the network prune each neuron's inputs to fit,
    # which costs far more accuracy than the rounding below (docs/benchmarks.md).
    module__n_accum_bits: int = 32
    module__n_hidden_neurons_multiplier: float = 0.5
    module__n_prune_neurons_percentage: float = 0.0
    rounding: str = "approximate"
    seed: int = 42

    @classmethod
    def from_hyperparameters(cls, raw: dict[str, str]) -> TrainingSettings:
        known = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        for name, text in raw.items():
            if name.startswith("sagemaker_"):  # SageMaker's own bookkeeping
                continue
            if name not in known:
                raise StepInputError(f"unknown hyperparameter {name!r}; known: {', '.join(sorted(known))}")
            if is_unset(name, str(text)):
                continue
            values[name] = _parse(name, str(text).strip(), known[name].type)
        settings = cls(**values)
        settings.validate()
        return settings

    @staticmethod
    def given_levers(raw: dict[str, str]) -> frozenset[str]:
        """The hyperparameters ML ops set: pinned, never searched."""
        return frozenset(
            name
            for name, text in raw.items()
            if not name.startswith("sagemaker_") and name != "model_type" and not is_unset(name, str(text))
        )

    def validate(self) -> None:
        if self.model_type not in MODEL_TYPES:
            raise StepInputError(f"unknown model type {self.model_type!r}; choose one of {', '.join(MODEL_TYPES)}")
        for name in ("n_bits", "module__n_w_bits", "module__n_a_bits", "module__n_accum_bits"):
            value = getattr(self, name)
            if value < 0 or value > 32:
                raise StepInputError(f"hyperparameter {name} must be between 1 and 32 (0 = default), got {value}")
        if self.rounding not in ROUNDING_METHODS:
            raise StepInputError(f"unknown rounding {self.rounding!r}; choose one of {', '.join(ROUNDING_METHODS)}")
        if not 0.0 <= self.p_error < 1.0:
            raise StepInputError(f"hyperparameter p_error must be in [0, 1), got {self.p_error}")
        if not 0.0 <= self.module__n_prune_neurons_percentage < 1.0:
            raise StepInputError("hyperparameter module__n_prune_neurons_percentage must be in [0, 1)")
        for name in ("max_depth", "n_estimators", "max_epochs", "module__n_layers"):
            if getattr(self, name) < 1:
                raise StepInputError(f"hyperparameter {name} must be at least 1")

    @property
    def effective_n_bits(self) -> int:
        return self.n_bits or _DEFAULT_N_BITS.get(self.model_type, 0)

    @property
    def effective_p_error(self) -> float:
        """The error probability per bootstrap; 0 leaves Concrete's default."""
        return self.p_error or _DEFAULT_P_ERROR.get(self.model_type, 0.0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def build_model(self) -> Any:
        """A fresh, unfitted Concrete ML estimator for these settings."""
        from concrete.ml import sklearn as cml

        if self.model_type == "logistic_regression":
            return cml.LogisticRegression(n_bits=self.effective_n_bits, max_iter=1000, random_state=self.seed)
        if self.model_type == "decision_tree":
            return cml.DecisionTreeClassifier(
                n_bits=self.effective_n_bits, max_depth=self.max_depth, random_state=self.seed
            )
        if self.model_type == "xgboost":
            return cml.XGBClassifier(
                n_bits=self.effective_n_bits,
                max_depth=self.max_depth,
                n_estimators=self.n_estimators,
                random_state=self.seed,
                n_jobs=1,
            )
        import torch

        torch.manual_seed(self.seed)
        return cml.NeuralNetClassifier(
            module__n_layers=self.module__n_layers,
            module__n_w_bits=self.module__n_w_bits,
            module__n_a_bits=self.module__n_a_bits,
            module__n_accum_bits=self.module__n_accum_bits,
            module__n_hidden_neurons_multiplier=self.module__n_hidden_neurons_multiplier,
            module__n_prune_neurons_percentage=self.module__n_prune_neurons_percentage,
            max_epochs=self.max_epochs,
            lr=self.lr,
            verbose=0,
            # skorch callbacks cannot be serialized, and model.json must be.
            callbacks="disable",
        )

    def compile(self, model: Any, x: Any) -> Any:
        """Compile a fitted model to its FHE circuit: the same in Train and Evaluate, so both get one circuit."""
        if self.model_type == "neural_network":
            concrete_internals.set_rounding(model, approximate=self.rounding == "approximate")
        # Concrete ML compresses whatever the configuration says unless told otherwise (concrete_internals).
        with concrete_internals.compression(self.compress_evaluation_keys, self.compress_input_ciphertexts):
            return model.compile(x, **self.compile_options())

    def compile_options(self) -> dict[str, Any]:
        from concrete.fhe import Configuration

        options: dict[str, Any] = {
            "configuration": Configuration(
                compress_evaluation_keys=self.compress_evaluation_keys,
                compress_input_ciphertexts=self.compress_input_ciphertexts,
            )
        }
        if self.effective_p_error > 0:
            options["p_error"] = self.effective_p_error
        return options


def is_unset(name: str, text: str) -> bool:
    text = text.strip()
    if not text:
        return True
    unset = UNSET_VALUES.get(name)
    if isinstance(unset, str) or unset is None:
        return text == unset
    try:
        return float(text) == unset
    except ValueError:
        return False


def _parse(name: str, text: str, kind: Any) -> Any:
    kind_name = kind if isinstance(kind, str) else kind.__name__
    try:
        if kind_name == "bool":
            lowered = text.lower()
            if lowered in ("true", "1", "yes"):
                return True
            if lowered in ("false", "0", "no"):
                return False
            raise ValueError(text)
        if kind_name == "int":
            return int(float(text)) if float(text).is_integer() else int(text)
        if kind_name == "float":
            return float(text)
        return text
    except ValueError:
        raise StepInputError(f"hyperparameter {name}={text!r} is not a valid {kind_name}") from None
