"""What a batch owner keeps on its own machine for a bundle and never uploads: the identifier columns of its input
rows (written back as the first columns of ``predictions.csv``) and its own labels (scored after decryption).

    <home>/bundles/<bundle id>.json    {"ids": {column: [value per row]}, "label_column", "labels"}  (0600)
    <home>/bundles/<bundle id>.request.json   an enclave bundle's request manifest, as encrypted  (0600)

``encrypt`` writes them, ``decrypt`` reads them; a bundle encrypted elsewhere simply has none. An enclave result is
opened against its request manifest, which the owner's role may write to the inbox but not read back."""

from __future__ import annotations

import json
import os
import stat
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from client.errors import FheClientError
from client.model import client_home

FOLDER = "bundles"


@dataclass(frozen=True)
class KeptColumns:
    ids: dict[str, list[str]] = field(default_factory=dict)
    label_column: str | None = None
    labels: list[str] | None = None

    @property
    def rows(self) -> int | None:
        lengths = {len(v) for v in self.ids.values()} | ({len(self.labels)} if self.labels is not None else set())
        return lengths.pop() if len(lengths) == 1 else None


def _path(home: Path | None, bundle_id: str) -> Path:
    return (home or client_home()) / FOLDER / f"{bundle_id}.json"


def _write_private(path: Path, body: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.parent.chmod(stat.S_IRWXU)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(body)
    return path


def keep(home: Path | None, bundle_id: str, kept: KeptColumns) -> Path | None:
    """Record ``kept`` for ``bundle_id`` (owner-only file); nothing when there is nothing to keep."""
    if not kept.ids and kept.labels is None:
        return None
    return _write_private(_path(home, bundle_id), json.dumps(asdict(kept)).encode())


def _request_path(home: Path | None, bundle_id: str) -> Path:
    return (home or client_home()) / FOLDER / f"{bundle_id}.request.json"


def keep_request(home: Path | None, bundle_id: str, manifest: bytes) -> Path:
    """Keep an enclave bundle's request manifest, which its result is opened against."""
    return _write_private(_request_path(home, bundle_id), manifest)


def kept_request(home: Path | None, bundle_id: str) -> bytes:
    try:
        return _request_path(home, bundle_id).read_bytes()
    except FileNotFoundError:
        raise FheClientError(
            f"no request manifest kept for bundle {bundle_id}: an enclave bundle's result is opened where it was "
            "encrypted (its client home)"
        ) from None


def kept_for(home: Path | None, bundle_id: str) -> KeptColumns:
    """What was kept for ``bundle_id``; empty when nothing was (or the bundle was encrypted elsewhere)."""
    try:
        data = json.loads(_path(home, bundle_id).read_text())
    except FileNotFoundError:
        return KeptColumns()
    return KeptColumns(dict(data.get("ids") or {}), data.get("label_column"), data.get("labels"))


def _same_class(predicted: str, label: str) -> bool:
    """Whether the owner's label names the predicted class (``1`` and ``1.0`` are one number)."""
    if predicted == label.strip():
        return True
    try:
        return float(predicted) == float(label)
    except ValueError:
        return False


def accuracy(classes: list[str], probabilities: npt.NDArray[np.float64], labels: list[str]) -> dict[str, float | int]:
    """How many predictions match the owner's own labels."""
    if len(labels) != len(probabilities):
        raise FheClientError(f"{len(labels)} labels for {len(probabilities)} predictions")
    predicted = [classes[i] for i in probabilities.argmax(axis=1)]
    correct = sum(_same_class(p, label) for p, label in zip(predicted, labels, strict=True))
    return {"accuracy": round(correct / len(labels), 6), "correct": correct, "rows": len(labels)}
