"""Reading training data: the scikit-learn bundled sets, or a user's CSV / NPY with a label column."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from containers.contract import StepInputError

# digits_28x28: scikit-learn's 8x8 digits upscaled bilinearly to 28x28, 784 features, MNIST's shape (MNIST
# itself is a download, and the training image must work offline).
BUILTIN_DATASETS = ("breast_cancer", "digits", "digits_28x28")
DEFAULT_LABEL_COLUMN = "label"
SUPPORTED_SUFFIXES = (".csv", ".npy")


@dataclass(frozen=True)
class Table:
    x: npt.NDArray[np.float64]
    labels: npt.NDArray[Any]
    feature_names: list[str]
    label_column: str


def builtin_dataset_csv(name: str, destination: Path) -> Path:
    """Write one of scikit-learn's bundled data sets as a CSV with a ``label`` column."""
    from sklearn import datasets

    if name not in BUILTIN_DATASETS:
        raise StepInputError(f"unknown bundled data set {name!r}; choose one of {', '.join(BUILTIN_DATASETS)}")
    if name == "digits_28x28":
        frame = _digits_28x28()
    else:
        loaders = {"breast_cancer": datasets.load_breast_cancer, "digits": datasets.load_digits}
        frame = loaders[name](as_frame=True).frame.rename(columns={"target": DEFAULT_LABEL_COLUMN})
    frame.columns = [str(c).replace(" ", "_") for c in frame.columns]
    destination.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(destination, index=False)
    return destination


def sample_records(samples: int, seed: int = 7) -> npt.NDArray[np.float64]:
    """``samples`` records of the bundled breast-cancer data set, features only, as a batch owner holds them."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer().data
    rows = np.random.default_rng(seed).permutation(len(data))[:samples]
    return np.asarray(data[rows], dtype=np.float64)


def write_records_csv(path: Path, feature_names: list[str], x: npt.NDArray[np.float64]) -> Path:
    """Records as a batch owner's CSV: a header of feature names, one row a record."""
    lines = [",".join(feature_names), *(",".join(repr(float(v)) for v in row) for row in x)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _digits_28x28() -> Any:
    import pandas as pd
    from scipy.ndimage import zoom
    from sklearn import datasets

    images, labels = datasets.load_digits(return_X_y=True)
    upscaled = np.stack([zoom(image.reshape(8, 8), 3.5, order=1) for image in images]).reshape(len(images), -1)
    frame = pd.DataFrame(upscaled, columns=[f"pixel_{i}" for i in range(upscaled.shape[1])])
    frame[DEFAULT_LABEL_COLUMN] = labels
    return frame


def find_input_file(location: Path) -> Path:
    """The single data file in a processing input folder (or the file itself)."""
    if location.is_file():
        return location
    if not location.is_dir():
        raise StepInputError(f"no input data at {location}")
    files = sorted(p for p in location.rglob("*") if p.is_file() and not p.name.startswith("."))
    data_files = [p for p in files if p.suffix.lower() in SUPPORTED_SUFFIXES]
    if not data_files:
        found = ", ".join(p.name for p in files) or "nothing"
        raise StepInputError(f"no .csv or .npy data file in the input (found {found})")
    if len(data_files) > 1:
        raise StepInputError("more than one data file in the input: " + ", ".join(p.name for p in data_files))
    return data_files[0]


def load_table(path: Path, label_column: str = DEFAULT_LABEL_COLUMN) -> Table:
    if path.stat().st_size == 0:
        raise StepInputError(f"input data file {path.name} is empty")
    if path.suffix.lower() == ".npy":
        return _load_npy(path, label_column)
    return _load_csv(path, label_column)


def _load_csv(path: Path, label_column: str) -> Table:
    import pandas as pd

    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise StepInputError(f"input data file {path.name} is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise StepInputError(f"input data file {path.name} is not a readable CSV: {error}") from None
    if frame.empty:
        raise StepInputError(f"input data file {path.name} has a header but no rows")
    if label_column not in frame.columns:
        shown = ", ".join(map(str, frame.columns[:20]))
        raise StepInputError(f"label column {label_column!r} not found in {path.name}; its columns are: {shown}")
    feature_names = [str(c) for c in frame.columns if c != label_column]
    if not feature_names:
        raise StepInputError(f"{path.name} has no feature columns besides the label {label_column!r}")
    features = frame[feature_names]
    numeric = features.apply(pd.to_numeric, errors="coerce")
    bad = numeric.isna()
    if bad.to_numpy().any():
        row, col = np.argwhere(bad.to_numpy())[0]
        value = features.iat[row, col]
        what = "a missing value" if value.strip() == "" else f"the non-numeric value {value!r}"
        raise StepInputError(
            f"feature column {feature_names[col]!r} has {what} at data row {row + 1} of {path.name}; "
            "every feature must be a number"
        )
    labels = frame[label_column].str.strip().to_numpy()
    if (labels == "").any():
        row = int(np.argmax(labels == ""))
        raise StepInputError(f"label column {label_column!r} is empty at data row {row + 1} of {path.name}")
    return Table(numeric.to_numpy(dtype=np.float64), labels, feature_names, label_column)


def _load_npy(path: Path, label_column: str) -> Table:
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as error:
        raise StepInputError(f"{path.name} is not a numeric NPY array: {error}") from None
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] < 2:
        raise StepInputError(
            f"{path.name} must be a 2-D array of rows with at least one feature and the label; got shape {array.shape}"
        )
    if not np.issubdtype(array.dtype, np.number):
        raise StepInputError(f"{path.name} holds {array.dtype} values; features must be numbers")
    # For NPY the label column is a column index; the default "label" means the last column.
    try:
        index = -1 if label_column == DEFAULT_LABEL_COLUMN else int(label_column)
    except ValueError:
        raise StepInputError(
            f"for an NPY input the label column must be a column index, not {label_column!r}"
        ) from None
    if not -array.shape[1] <= index < array.shape[1]:
        raise StepInputError(f"label column index {index} is outside the {array.shape[1]} columns of {path.name}")
    index %= array.shape[1]
    x = np.delete(array, index, axis=1).astype(np.float64)
    if not np.isfinite(x).all():
        row, col = np.argwhere(~np.isfinite(x))[0]
        raise StepInputError(f"feature column {col} has a missing or infinite value at row {row + 1} of {path.name}")
    labels = array[:, index]
    names = [f"f{i}" for i in range(x.shape[1])]
    return Table(x, labels, names, str(index))
