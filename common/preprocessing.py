"""The preprocessing record: the schema of the training data and the scaling applied to it.

Training writes it next to the model; the client reads it from the registered model and applies the same
transform before encrypting, so both sides agree on what a feature vector means.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

FEATURE_RANGE = (-1.0, 1.0)
RECORD_VERSION = 1


class SchemaError(ValueError):
    """Input rows that do not match the recorded schema."""


@dataclass(frozen=True)
class PreprocessingRecord:
    feature_names: list[str]
    label_column: str
    classes: list[str]
    data_min: list[float]
    data_max: list[float]
    feature_range: tuple[float, float] = FEATURE_RANGE
    version: int = RECORD_VERSION
    source: dict[str, Any] = field(default_factory=dict)
    # Columns of the training file that are no feature, each with why (an identifier, ignored, not chosen); the
    # client keeps the id columns on its side only and writes them back next to the predictions.
    left_out: dict[str, str] = field(default_factory=dict)
    id_columns: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # what ML ops chose to keep despite the checks

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    @classmethod
    def fit(
        cls,
        x: npt.NDArray[np.floating[Any]],
        feature_names: list[str],
        label_column: str,
        classes: list[str],
        source: dict[str, Any] | None = None,
        *,
        left_out: dict[str, str] | None = None,
        id_columns: list[str] | None = None,
        warnings: list[str] | None = None,
    ) -> PreprocessingRecord:
        return cls(
            feature_names=list(feature_names),
            label_column=label_column,
            classes=[str(c) for c in classes],
            data_min=[float(v) for v in x.min(axis=0)],
            data_max=[float(v) for v in x.max(axis=0)],
            source=dict(source or {}),
            left_out=dict(left_out or {}),
            id_columns=list(id_columns or []),
            warnings=list(warnings or []),
        )

    def transform(self, x: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
        """Scale raw features to ``feature_range`` exactly as in training; values outside the training
        range are clipped, because the quantizers were calibrated on that range."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise SchemaError(
                f"expected rows of {self.n_features} features ({', '.join(self.feature_names[:5])}…), "
                f"got an array of shape {x.shape}"
            )
        lo, hi = self.feature_range
        data_min = np.asarray(self.data_min)
        span = np.asarray(self.data_max) - data_min
        # A feature that was constant in training carries no information: map it to the middle.
        safe_span = np.where(span > 0, span, 1.0)
        scaled = lo + (x - data_min) / safe_span * (hi - lo)
        scaled = np.where(span > 0, scaled, (lo + hi) / 2)
        return np.clip(scaled, lo, hi).astype(np.float32)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> PreprocessingRecord:
        data = json.loads(text)
        if data.get("version") != RECORD_VERSION:
            raise SchemaError(f"unsupported preprocessing record version {data.get('version')!r}")
        data["feature_range"] = tuple(data["feature_range"])
        return cls(**data)

    def save(self, path: Path) -> None:
        path.write_text(self.to_json())

    @classmethod
    def load(cls, path: Path) -> PreprocessingRecord:
        return cls.from_json(path.read_text())
