"""Preprocess step: validate the data, pick the feature columns (FeatureColumns, IgnoreColumns, IdColumns; a feature
that looks like a record identifier is refused unless IdentifierFeatures=keep), split, scale features to [-1, 1],
record schema, scaling and what was left out and why.

Outputs (SageMaker processing outputs):
  <output>/train/train.npz, <output>/test/test.npz   features (float32) and class indices
  <output>/preprocessing/preprocessing.json          the preprocessing record the client applies too
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from common.preprocessing import PreprocessingRecord
from containers.contract import StepInputError, container_path, run_entry_point
from containers.training.data import DEFAULT_LABEL_COLUMN, ColumnChoice, find_input_file, load_table

MIN_SAMPLES_PER_CLASS = 2


def encode_labels(labels: npt.NDArray[Any]) -> tuple[npt.NDArray[np.int64], list[str]]:
    """Class indices 0..K-1 and the class names, numerically ordered when every label is a number."""
    names = [_label_name(v) for v in labels]
    unique = sorted(set(names), key=lambda n: (0, float(n), n) if _is_number(n) else (1, 0.0, n))
    index = {name: i for i, name in enumerate(unique)}
    return np.array([index[n] for n in names], dtype=np.int64), unique


def _label_name(value: Any) -> str:
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    return str(value).strip()


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def preprocess(
    input_path: Path,
    output: Path,
    label_column: str,
    test_size: float,
    seed: int,
    columns: ColumnChoice | None = None,
) -> dict[str, Any]:
    from sklearn.model_selection import train_test_split

    if not 0.0 < test_size < 1.0:
        raise StepInputError(f"test size must be between 0 and 1, got {test_size}")
    columns = columns or ColumnChoice()
    source = find_input_file(input_path)
    table = load_table(source, label_column, columns)
    for warning in table.warnings:
        print(f"warning: {warning}", flush=True)
    y, classes = encode_labels(table.labels)
    if len(classes) < 2:
        raise StepInputError(f"the label column {label_column!r} holds a single class ({classes[0]}); need two or more")
    counts = np.bincount(y)
    if counts.min() < MIN_SAMPLES_PER_CLASS:
        rare = classes[int(np.argmin(counts))]
        raise StepInputError(f"class {rare!r} has only {counts.min()} sample(s); each class needs at least 2")
    n_test = round(len(y) * test_size)
    if n_test < len(classes) or len(y) - n_test < len(classes):
        raise StepInputError(f"{len(y)} rows are too few to split into train and test sets for {len(classes)} classes")

    x_train, x_test, y_train, y_test = train_test_split(table.x, y, test_size=test_size, random_state=seed, stratify=y)
    record = PreprocessingRecord.fit(
        x_train,
        table.feature_names,
        table.label_column,
        classes,
        source={"file": source.name, "rows": len(y), "test_size": test_size, "seed": seed},
        left_out=table.left_out,
        id_columns=list(columns.ids),
        warnings=table.warnings,
    )
    for name, x, labels in (("train", x_train, y_train), ("test", x_test, y_test)):
        folder = output / name
        folder.mkdir(parents=True, exist_ok=True)
        np.savez(folder / f"{name}.npz", x=record.transform(x), y=labels)
    (output / "preprocessing").mkdir(parents=True, exist_ok=True)
    record.save(output / "preprocessing" / "preprocessing.json")
    summary = {
        "rows": len(y),
        "features": record.n_features,
        "classes": classes,
        "train_rows": len(y_train),
        "test_rows": len(y_test),
        "left_out": table.left_out,
        "warnings": table.warnings,
    }
    print(json.dumps({"preprocess": summary}), flush=True)
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="preprocess", description=__doc__)
    parser.add_argument("--input", default="/opt/ml/processing/input/data", help="container folder or file")
    parser.add_argument("--output", default="/opt/ml/processing/output", help="container folder")
    parser.add_argument(
        "--label-column",
        default=DEFAULT_LABEL_COLUMN,
        help="CSV column name, or NPY column index (default: 'label'; last column for NPY)",
    )
    parser.add_argument("--feature-columns", default="", help="comma-separated; default: every other column")
    parser.add_argument("--ignore-columns", default="", help="comma-separated columns that are no feature")
    parser.add_argument("--id-columns", default="", help="comma-separated record identifiers: never a feature")
    parser.add_argument(
        "--identifier-features", default="refuse", help="refuse (default) or keep a feature that looks like an id"
    )
    parser.add_argument("--test-size", type=float, default=0.25)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    run_entry_point(
        "processing",
        lambda: preprocess(
            container_path(args.input),
            container_path(args.output),
            args.label_column,
            args.test_size,
            args.seed,
            ColumnChoice.parse(args.feature_columns, args.ignore_columns, args.id_columns, args.identifier_features),
        ),
    )


if __name__ == "__main__":
    main()
