"""The enclave's models, loaded as data and never as code: an XGBoost model in its JSON format, an ONNX graph
run by ONNX Runtime on CPU (a scikit-learn pipeline exported with skl2onnx, for example), or a pretrained causal
language model (safetensors and JSON, ``language_model.py``). No pickle is read, so a
model cannot carry instructions into the enclave. The model's digest (SHA-256 of its bytes) is what the enclave
attests to in ``user_data`` and what the registry records."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt

from common.enclave_model import CAUSAL_LM, FORMATS, XGBOOST_JSON
from common.language_model import MAX_LANGUAGE_MODEL_BYTES

if TYPE_CHECKING:
    from containers.enclave.language_model import LanguageModel

MAX_MODEL_BYTES = 512 * 1024**2


class ModelError(ValueError):
    """A model the enclave will not load; the message names why."""


class Predictor(Protocol):
    def __call__(self, records: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]: ...


@dataclass(frozen=True)
class EnclaveModel:
    format: str
    digest: str  # sha256 hex of the model's bytes
    features: int
    predict: Predictor
    language: LanguageModel | None = None  # a language model completes texts; it has no numeric predict


def _xgboost(model: bytes) -> tuple[Predictor, int]:
    import xgboost  # only where the model is XGBoost's

    try:
        document = json.loads(model)
    except (ValueError, UnicodeDecodeError) as error:
        raise ModelError("an xgboost-json model must be XGBoost's JSON format") from error
    if not isinstance(document, dict) or "learner" not in document:
        raise ModelError("an xgboost-json model must be XGBoost's JSON format (no 'learner')")
    booster = xgboost.Booster()
    try:
        booster.load_model(bytearray(model))
    except xgboost.core.XGBoostError as error:
        raise ModelError("XGBoost refused the model") from error
    features = int(booster.num_features())

    def predict(records: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        return np.asarray(booster.predict(xgboost.DMatrix(records)), dtype=np.float64)

    return predict, features


def _onnx(model: bytes) -> tuple[Predictor, int]:
    import onnxruntime  # only where the model is ONNX

    try:
        session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
    except Exception as error:  # ONNX Runtime raises its own kinds for a graph it cannot load
        raise ModelError("ONNX Runtime refused the model") from error
    inputs = session.get_inputs()
    if len(inputs) != 1 or len(inputs[0].shape) != 2 or not isinstance(inputs[0].shape[1], int):
        raise ModelError("an onnx model must take one 2-dimensional input with a fixed number of features")
    name, features = inputs[0].name, int(inputs[0].shape[1])
    element = np.float32 if inputs[0].type == "tensor(float)" else np.float64
    outputs = [output.name for output in session.get_outputs()]
    # A classifier exported by skl2onnx answers (label, probabilities): the probabilities are the prediction.
    chosen = outputs[-1] if len(outputs) > 1 else outputs[0]

    def predict(records: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        (answer,) = session.run([chosen], {name: records.astype(element)})
        return np.asarray(_as_array(answer), dtype=np.float64)

    return predict, features


def _as_array(answer: Any) -> Any:
    """skl2onnx's probabilities come as a list of per-row maps unless exported with ``zipmap=False``."""
    if isinstance(answer, list) and answer and isinstance(answer[0], dict):
        return [[row[key] for key in sorted(row)] for row in answer]
    return answer


def _takes_no_numbers(records: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    raise ModelError("a language model completes texts; it takes no records of numbers")


def _language_model(model: bytes) -> EnclaveModel:
    from common.language_model import LanguageModelError
    from containers.enclave.language_model import load_language_model

    try:
        language = load_language_model(model, threads=os.cpu_count())
    except LanguageModelError as error:
        raise ModelError(str(error)) from None
    return EnclaveModel(CAUSAL_LM, language.digest, 0, _takes_no_numbers, language)


def load_model(model_format: str, model: bytes) -> EnclaveModel:
    if model_format not in FORMATS:
        raise ModelError(f"a model's format must be one of {', '.join(FORMATS)}, not {model_format!r}")
    limit = MAX_LANGUAGE_MODEL_BYTES if model_format == CAUSAL_LM else MAX_MODEL_BYTES
    if not 0 < len(model) <= limit:
        raise ModelError(f"a {model_format} model is 1 to {limit} bytes")
    if model_format == CAUSAL_LM:
        return _language_model(model)
    predict, features = (_xgboost if model_format == XGBOOST_JSON else _onnx)(model)
    return EnclaveModel(model_format, hashlib.sha256(model).hexdigest(), features, predict)
