"""Input rows → a request bundle on disk: the training preprocessing, then one ciphertext per row, packed
into shards of ``shard_size`` rows, then the manifest."""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from client.errors import InputError
from client.model import ClientModel
from common.bundle.manifest import Manifest, ShardEntry, shard_key
from common.bundle.schema import MANIFEST_NAME, MAX_SAMPLES_PER_SHARD, sha256_hex, utc_now
from common.bundle.shards import encode_shard
from common.preprocessing import SchemaError

DEFAULT_SHARD_SIZE = 100


def new_bundle_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(4)


@dataclass(frozen=True)
class InputRows:
    """What the client reads from an input file: the features it encrypts, and what never leaves the machine:
    identifier columns (written back next to the predictions) and the owner's own labels (to score them)."""

    x: npt.NDArray[np.float64]
    ids: dict[str, list[str]] = field(default_factory=dict)  # column → one value per row
    labels: list[str] | None = None
    ignored: list[str] = field(default_factory=list)  # columns neither feature, id nor label


def read_rows(path: Path, feature_names: list[str]) -> npt.NDArray[np.float64]:
    """The feature matrix of a CSV (columns found by name; others, such as a label, ignored) or an NPY file."""
    return read_input(path, feature_names).x


def read_input(
    path: Path, feature_names: list[str], id_columns: Sequence[str] = (), label_column: str | None = None
) -> InputRows:
    """The rows of a CSV (feature columns found by name, in any order) or an NPY file (features only), with the
    CSV's ``id_columns`` and ``label_column`` kept as text."""
    if not path.is_file():
        raise InputError(f"input file {path} does not exist")
    if path.stat().st_size == 0:
        raise InputError(f"input file {path.name} is empty")
    if path.suffix.lower() == ".npy":
        if id_columns or label_column:
            raise InputError(f"{path.name} is an NPY array, which has no named columns: ids and labels need a CSV")
        try:
            array = np.load(path, allow_pickle=False)
        except ValueError as error:
            raise InputError(f"{path.name} is not a numeric NPY array: {error}") from None
        if array.ndim != 2 or array.shape[1] != len(feature_names) or not np.issubdtype(array.dtype, np.number):
            raise InputError(
                f"{path.name} must be a 2-D numeric array with {len(feature_names)} columns, "
                f"got {array.dtype} {array.shape}"
            )
        rows = InputRows(array.astype(np.float64))
    else:
        rows = _read_csv(path, feature_names, id_columns, label_column)
    x = rows.x
    if len(x) == 0:
        raise InputError(f"{path.name} has no rows")
    if not np.isfinite(x).all():
        row = int(np.argwhere(~np.isfinite(x))[0][0])
        raise InputError(f"row {row + 1} of {path.name} has a missing or infinite value")
    return rows


def _read_csv(path: Path, feature_names: list[str], id_columns: Sequence[str], label_column: str | None) -> InputRows:
    import pandas as pd

    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as error:
        raise InputError(f"{path.name} is not a readable CSV: {error}") from None
    missing = [name for name in feature_names if name not in frame.columns]
    if missing:
        raise InputError(f"{path.name} lacks the feature column(s) {', '.join(missing[:5])} the model was trained on")
    asked = [*id_columns, *([label_column] if label_column else [])]
    absent = [name for name in asked if name not in frame.columns]
    if absent:
        raise InputError(f"{path.name} has no column {', '.join(map(repr, absent))}; its columns: "
                         + ", ".join(map(str, frame.columns[:20])))  # fmt: skip
    numeric = frame[feature_names].apply(pd.to_numeric, errors="coerce")
    bad = numeric.isna().to_numpy()
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise InputError(f"column {feature_names[col]!r} is not a number at data row {row + 1} of {path.name}")
    used = {*feature_names, *asked}
    return InputRows(
        numeric.to_numpy(dtype=np.float64),
        {name: frame[name].str.strip().tolist() for name in id_columns},
        frame[label_column].str.strip().tolist() if label_column else None,
        [str(c) for c in frame.columns if c not in used],
    )


def encrypt_rows(
    model: ClientModel,
    x: npt.NDArray[Any],
    destination: Path,
    *,
    shard_size: int = DEFAULT_SHARD_SIZE,
    bundle_id: str | None = None,
    progress: bool = True,
) -> Manifest:
    if not 1 <= shard_size <= MAX_SAMPLES_PER_SHARD:
        raise InputError(f"the shard size must be between 1 and {MAX_SAMPLES_PER_SHARD}, not {shard_size}")
    try:
        scaled = model.preprocessing.transform(x)
    except SchemaError as error:
        raise InputError(str(error)) from None
    evaluation_key = model.evaluation_key()
    client = model.fhe_client()
    client.generate_private_and_evaluation_keys(force=False)  # loads the existing key set
    destination.mkdir(parents=True, exist_ok=True)
    if (destination / MANIFEST_NAME).exists():
        raise InputError(f"{destination} already holds a bundle; choose an empty folder")
    entries = []
    with tqdm(total=len(scaled), unit="row", desc="encrypt", disable=not progress) as bar:
        for index, start in enumerate(range(0, len(scaled), shard_size)):
            ciphertexts = []
            for row in scaled[start : start + shard_size]:
                ciphertexts.append(client.quantize_encrypt_serialize(row[None, :]))
                bar.update(1)
            data = encode_shard(ciphertexts)
            key = shard_key(index)
            (destination / key).parent.mkdir(parents=True, exist_ok=True)
            (destination / key).write_bytes(data)
            entries.append(ShardEntry(index, key, len(ciphertexts), sha256_hex(data), len(data)))
    manifest = Manifest(
        kind="request",
        bundle_id=bundle_id or new_bundle_id(),
        created_at=utc_now(),
        model=model.ref,
        versions=model.versions.to_dict(),
        evaluation_key=evaluation_key,
        shards=tuple(entries),
    )
    (destination / MANIFEST_NAME).write_bytes(manifest.to_json())
    return manifest
