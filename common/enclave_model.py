"""An enclave model as it lies in ``model.tar.gz`` (ModelKind=enclave): the model file, in one of the formats the
enclave loads as data (never pickle), and its record ``enclave_model.json`` (format, file, SHA-256, features,
model type). The digest is what the registry records (customer metadata ``model_digest``), what the enclave
attests to in its document's ``user_data``, and what the audit checks a served bundle against."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from common.artifacts import ENCLAVE_MODEL_JSON

XGBOOST_JSON = "xgboost-json"
ONNX = "onnx"
# A pretrained causal language model: its folder packed as data only (common/language_model.py).
CAUSAL_LM = "causal-lm"
FORMATS = (XGBOOST_JSON, ONNX, CAUSAL_LM)
# The model file of each format in the model folder.
MODEL_FILES = {XGBOOST_JSON: "model.xgboost.json", ONNX: "model.onnx", CAUSAL_LM: "model.lm.tar"}
RECORD_JSON = ENCLAVE_MODEL_JSON


class EnclaveModelError(ValueError):
    """A model folder whose enclave model is missing, malformed or not the one its record names."""


@dataclass(frozen=True)
class EnclaveModelRecord:
    format: str
    sha256: str
    features: int  # 0 for a language model: it takes texts
    model_type: str

    @property
    def takes_text(self) -> bool:
        return self.format == CAUSAL_LM

    @property
    def file(self) -> str:
        return MODEL_FILES[self.format]

    @classmethod
    def of(cls, model_format: str, content: bytes, features: int, model_type: str) -> EnclaveModelRecord:
        if model_format not in FORMATS:
            raise EnclaveModelError(f"an enclave model's format is one of {', '.join(FORMATS)}, not {model_format!r}")
        return cls(model_format, hashlib.sha256(content).hexdigest(), features, model_type)

    @classmethod
    def from_dict(cls, data: Any) -> EnclaveModelRecord:
        try:
            record = cls(str(data["format"]), str(data["sha256"]), int(data["features"]), str(data["model_type"]))
        except (KeyError, TypeError, ValueError) as error:
            raise EnclaveModelError(f"{RECORD_JSON} is not an enclave model record ({error!r})") from None
        if record.format not in FORMATS:
            raise EnclaveModelError(f"{RECORD_JSON} names format {record.format!r}; known: {', '.join(FORMATS)}")
        return record

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "file": self.file}

    def save(self, folder: Path, content: bytes) -> None:
        """Write the model file and this record next to it."""
        (folder / self.file).write_bytes(content)
        (folder / RECORD_JSON).write_text(json.dumps(self.to_dict(), indent=2))

    @staticmethod
    def present(folder: Path) -> bool:
        return (folder / RECORD_JSON).exists()

    @classmethod
    def load(cls, folder: Path) -> tuple[EnclaveModelRecord, bytes]:
        """The record of the model in ``folder`` and the model's bytes, checked against the record's digest."""
        try:
            record = cls.from_dict(json.loads((folder / RECORD_JSON).read_text()))
            content = (folder / record.file).read_bytes()
        except FileNotFoundError as error:
            raise EnclaveModelError(f"the model folder lacks {Path(str(error.filename)).name}") from None
        except ValueError as error:
            raise EnclaveModelError(f"{RECORD_JSON} does not parse ({error})") from None
        if hashlib.sha256(content).hexdigest() != record.sha256:
            raise EnclaveModelError(f"{record.file} is not the model {RECORD_JSON} records (its SHA-256 differs)")
        return record, content
