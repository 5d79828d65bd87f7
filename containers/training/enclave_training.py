"""Train step for ModelKind=enclave: a float model, served in the attested enclave instead of as an FHE circuit
(for models FHE cannot carry: a 500-tree boosted model, a float model whose accuracy the owner will not trade).

The model is saved as data the enclave loads without running code of the model's (``common/enclave_model.py``):
XGBoost's JSON format for ``xgboost``, ONNX (converted by skl2onnx) for the scikit-learn models. Its levers are the
model's own (``n_estimators``, ``max_depth``); the FHE levers and the lever search do not apply, and a lever given
for them is refused by name rather than silently ignored.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from common import artifacts
from common.enclave_model import ONNX, XGBOOST_JSON, EnclaveModelRecord
from common.preprocessing import PreprocessingRecord
from common.versions import VersionsRecord
from containers.contract import StepInputError
from containers.training.training_settings import TrainingSettings, is_unset

# Model type → the format the enclave loads it in.
ENCLAVE_MODEL_TYPES = {"xgboost": XGBOOST_JSON, "random_forest": ONNX, "logistic_regression": ONNX}
# The levers an enclave model takes; 0 (unset) gives the model type's default below.
ENCLAVE_LEVERS = ("n_estimators", "max_depth")
_DEFAULT_ESTIMATORS = {"xgboost": 500, "random_forest": 200}
_DEFAULT_DEPTH = {"xgboost": 4, "random_forest": 8}
# The ONNX opsets ONNX Runtime (the enclave's runtime for these models) runs.
_ONNX_OPSETS = {"": 17, "ai.onnx.ml": 3}


@dataclass(frozen=True)
class EnclaveTrainingSettings:
    model_type: str = "xgboost"
    n_estimators: int = 0
    max_depth: int = 0
    seed: int = 42

    @classmethod
    def from_hyperparameters(cls, raw: dict[str, str]) -> EnclaveTrainingSettings:
        """The enclave model's settings from the Train step's hyperparameters (the pipeline passes every lever;
        those of FHE must be left at their defaults)."""
        defaults = TrainingSettings()
        known = {f.name for f in fields(TrainingSettings)}
        values: dict[str, Any] = {}
        for name, text in raw.items():
            if name.startswith("sagemaker_"):
                continue
            if name == "model_type":
                values[name] = str(text).strip()
            elif name in ENCLAVE_LEVERS:
                if not is_unset(name, str(text)):
                    values[name] = _positive_int(name, str(text))
            elif name not in known:
                raise StepInputError(f"unknown hyperparameter {name!r}; an enclave model takes model_type, "
                                     f"{', '.join(ENCLAVE_LEVERS)}")  # fmt: skip
            elif not is_unset(name, str(text)) and str(text).strip() != str(getattr(defaults, name)):
                raise StepInputError(
                    f"hyperparameter {name}={text!r} is an FHE lever; an enclave model (ModelKind=enclave) takes "
                    f"only {', '.join(ENCLAVE_LEVERS)}"
                )
        settings = cls(**values)
        if settings.model_type not in ENCLAVE_MODEL_TYPES:
            raise StepInputError(
                f"model type {settings.model_type!r} is not served in the enclave; choose one of "
                f"{', '.join(ENCLAVE_MODEL_TYPES)}"
            )
        return settings

    @property
    def format(self) -> str:
        return ENCLAVE_MODEL_TYPES[self.model_type]

    @property
    def effective_n_estimators(self) -> int:
        return self.n_estimators or _DEFAULT_ESTIMATORS.get(self.model_type, 0)

    @property
    def effective_max_depth(self) -> int:
        return self.max_depth or _DEFAULT_DEPTH.get(self.model_type, 0)

    def build_model(self) -> Any:
        if self.model_type == "xgboost":
            import xgboost

            return xgboost.XGBClassifier(
                n_estimators=self.effective_n_estimators,
                max_depth=self.effective_max_depth,
                random_state=self.seed,
                tree_method="hist",
                n_jobs=1,
            )
        if self.model_type == "random_forest":
            from sklearn.ensemble import RandomForestClassifier

            return RandomForestClassifier(
                n_estimators=self.effective_n_estimators, max_depth=self.effective_max_depth, random_state=self.seed
            )
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(max_iter=1000, random_state=self.seed)

    def export(self, model: Any, features: int) -> bytes:
        """The fitted model as the bytes the enclave loads."""
        if self.format == XGBOOST_JSON:
            return bytes(model.get_booster().save_raw(raw_format="json"))
        from skl2onnx import to_onnx

        sample = np.zeros((1, features), dtype=np.float32)
        # Probabilities as a plain tensor (no ZipMap): what the enclave's ONNX runtime answers as the prediction.
        onnx_model = to_onnx(model, sample, options={id(model): {"zipmap": False}}, target_opset=_ONNX_OPSETS)
        return bytes(onnx_model.SerializeToString())

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "n_estimators": self.effective_n_estimators,
            "max_depth": self.effective_max_depth,
            "format": self.format,
        }


def _positive_int(name: str, text: str) -> int:
    try:
        value = float(text)
    except ValueError:
        raise StepInputError(f"hyperparameter {name}={text!r} is not a number") from None
    if not value.is_integer() or value < 1:
        raise StepInputError(f"hyperparameter {name} must be a whole number of at least 1 (0 = default), got {text}")
    return int(value)


def train_enclave_model(
    settings: EnclaveTrainingSettings,
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.int64],
    record: PreprocessingRecord,
    output: Path,
) -> dict[str, Any]:
    """Fit the float model on the training split and write the model folder: the model file and its record,
    ``preprocessing.json``, ``versions.json``, ``training.json``."""
    model = settings.build_model()
    started = time.perf_counter()
    model.fit(x, y)
    fit_seconds = time.perf_counter() - started
    content = settings.export(model, x.shape[1])
    enclave_model = EnclaveModelRecord.of(settings.format, content, x.shape[1], settings.model_type)
    output.mkdir(parents=True, exist_ok=True)
    enclave_model.save(output, content)
    record.save(output / artifacts.PREPROCESSING_JSON)
    (output / artifacts.VERSIONS_JSON).write_text(json.dumps(VersionsRecord.current().to_dict(), indent=2))
    summary = {
        "model_kind": "enclave",
        "settings": settings.to_dict(),
        "train_rows": len(y),
        "train_accuracy_clear": float((model.predict(x) == y).mean()),
        "fit_seconds": fit_seconds,
        "model": enclave_model.to_dict(),
        "model_bytes": len(content),
    }
    (output / artifacts.TRAINING_JSON).write_text(json.dumps(summary, indent=2))
    print(json.dumps({"train": {k: v for k, v in summary.items() if k != "settings"}}), flush=True)
    return summary
