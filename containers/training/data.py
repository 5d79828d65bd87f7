"""Reading training data: the scikit-learn bundled sets, or a user's CSV / NPY with a label column; which columns
are features (:class:`ColumnChoice`), and a check that no feature is a record identifier."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from containers.contract import StepInputError

# digits_28x28: scikit-learn's 8x8 digits upscaled bilinearly to 28x28, 784 features, MNIST's shape (MNIST
# itself is a download, and the training image must work offline).
# breast_cancer_uci: the breast-cancer set as the UCI repository distributes it: an ``id`` column, the label
# ``diagnosis`` as M or B, then the 30 features.
BUILTIN_DATASETS = ("breast_cancer", "breast_cancer_uci", "digits", "digits_28x28")
DEFAULT_LABEL_COLUMN = "label"
SUPPORTED_SUFFIXES = (".csv", ".npy")


MIN_ROWS_FOR_IDENTIFIER_CHECK = 20  # fewer rows than this can be unique whole numbers by chance


@dataclass(frozen=True)
class ColumnChoice:
    """Which columns of the training file are features: ``features`` (empty: every column but the label and those
    left out), minus ``ignore`` and ``ids`` (identifiers: never a feature; the client keeps them on its side).
    A feature that looks like an identifier is refused, unless ``keep_identifiers``: then kept, with a warning."""

    features: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    ids: tuple[str, ...] = ()
    keep_identifiers: bool = False

    @classmethod
    def parse(cls, features: str = "", ignore: str = "", ids: str = "", identifiers: str = "refuse") -> ColumnChoice:
        """From the pipeline's parameters: comma-separated column names; ``identifiers`` is refuse or keep."""
        if identifiers not in ("refuse", "keep"):
            raise StepInputError(f"IdentifierFeatures must be 'refuse' or 'keep', not {identifiers!r}")

        def names(text: str) -> tuple[str, ...]:
            return tuple(name.strip() for name in text.split(",") if name.strip())

        return cls(names(features), names(ignore), names(ids), identifiers == "keep")

    def select(self, columns: list[str], label_column: str, source: str) -> tuple[list[str], dict[str, str]]:
        """The feature columns, in the file's order, and each column left out with why."""
        named = {"FeatureColumns": self.features, "IgnoreColumns": self.ignore, "IdColumns": self.ids}
        for parameter, chosen in named.items():
            unknown = [name for name in chosen if name not in columns]
            if unknown:
                raise StepInputError(
                    f"{parameter} names {', '.join(map(repr, unknown))}, not a column of {source}; its columns are: "
                    + ", ".join(columns[:20])
                )
            if label_column in chosen:
                raise StepInputError(f"{parameter} names the label column {label_column!r}")
        both = sorted(set(self.features) & (set(self.ignore) | set(self.ids)))
        if both:
            raise StepInputError(f"{', '.join(both)}: named as a feature and as left out (IgnoreColumns or IdColumns)")
        left_out = {name: "IdColumns: a record identifier, kept by the client only" for name in self.ids}
        left_out.update({name: "IgnoreColumns" for name in self.ignore if name not in left_out})
        candidates = [c for c in columns if c != label_column and c not in left_out]
        if self.features:
            left_out.update({c: "not in FeatureColumns" for c in candidates if c not in self.features})
            candidates = [c for c in candidates if c in self.features]
        if not candidates:
            raise StepInputError(f"{source} has no feature columns left besides the label {label_column!r}")
        return candidates, left_out


def identifier_problem(values: npt.NDArray[np.float64]) -> str | None:
    """Why a feature column looks like a record identifier (whole numbers, a different one on every row, so the
    model can learn nothing general from it and the column leaks who a record is), or None."""
    if len(values) < MIN_ROWS_FOR_IDENTIFIER_CHECK or not np.all(np.mod(values, 1) == 0):
        return None
    if len(np.unique(values)) != len(values):
        return None
    ordered = bool(np.all(np.diff(values) > 0) or np.all(np.diff(values) < 0))
    return "its values are whole numbers, " + ("increasing row by row" if ordered else "a different one on every row")


@dataclass(frozen=True)
class Table:
    x: npt.NDArray[np.float64]
    labels: npt.NDArray[Any]
    feature_names: list[str]
    label_column: str
    left_out: dict[str, str] = field(default_factory=dict)  # column → why it is no feature
    warnings: list[str] = field(default_factory=list)

    def checked(self, choice: ColumnChoice, source: str) -> Table:
        """This table once no feature looks like an identifier: refused naming the column and what to do, or with
        ``choice.keep_identifiers`` kept with a warning."""
        warnings = list(self.warnings)
        for column, name in enumerate(self.feature_names):
            problem = identifier_problem(self.x[:, column])
            if problem is None:
                continue
            message = f"feature column {name!r} of {source} looks like a record identifier: {problem}"
            if not choice.keep_identifiers:
                raise StepInputError(
                    f"{message}. Name it in IdColumns (the client keeps it and writes it next to the predictions) or "
                    "IgnoreColumns; or set IdentifierFeatures=keep to train on it anyway"
                )
            warnings.append(f"{message}; kept as a feature (IdentifierFeatures=keep)")
        return Table(self.x, self.labels, self.feature_names, self.label_column, dict(self.left_out), warnings)


def builtin_dataset_csv(name: str, destination: Path) -> Path:
    """Write one of scikit-learn's bundled data sets as a CSV with a ``label`` column."""
    from sklearn import datasets

    if name not in BUILTIN_DATASETS:
        raise StepInputError(f"unknown bundled data set {name!r}; choose one of {', '.join(BUILTIN_DATASETS)}")
    if name == "digits_28x28":
        frame = _digits_28x28()
    elif name == "breast_cancer_uci":
        frame = _breast_cancer_uci()
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


def sample_uci_records(samples: int, path: Path, seed: int = 7) -> npt.NDArray[np.float64]:
    """The rows :func:`sample_records` picks, as a batch owner's UCI-shaped file (``id``, ``diagnosis``, the 30
    features) at ``path``; returns their features."""
    frame = _breast_cancer_uci()
    frame.columns = [str(c).replace(" ", "_") for c in frame.columns]
    rows = np.random.default_rng(seed).permutation(len(frame))[:samples]
    frame.iloc[rows].to_csv(path, index=False)
    return np.asarray(frame.iloc[rows, 2:].to_numpy(), dtype=np.float64)


def write_records_csv(path: Path, feature_names: list[str], x: npt.NDArray[np.float64]) -> Path:
    """Records as a batch owner's CSV: a header of feature names, one row a record."""
    lines = [",".join(feature_names), *(",".join(repr(float(v)) for v in row) for row in x)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _breast_cancer_uci() -> Any:
    from sklearn import datasets

    loaded = datasets.load_breast_cancer(as_frame=True)
    features = loaded.data
    ids = np.random.default_rng(569).choice(np.arange(8_670, 99_999_999), size=len(features), replace=False)
    diagnosis = np.where(loaded.target.to_numpy() == 0, "M", "B")  # scikit-learn's class 0 is malignant
    frame = features.copy()
    frame.insert(0, "diagnosis", diagnosis)
    frame.insert(0, "id", ids)
    return frame


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


def load_table(path: Path, label_column: str = DEFAULT_LABEL_COLUMN, choice: ColumnChoice | None = None) -> Table:
    """The file's features (as ``choice`` picks them; default: every column but the label) and labels, checked
    for identifiers."""
    choice = choice or ColumnChoice()
    if path.stat().st_size == 0:
        raise StepInputError(f"input data file {path.name} is empty")
    if path.suffix.lower() == ".npy":
        table = _load_npy(path, label_column, choice)
    else:
        table = _load_csv(path, label_column, choice)
    return table.checked(choice, path.name)


def _load_csv(path: Path, label_column: str, choice: ColumnChoice) -> Table:
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
    feature_names, left_out = choice.select([str(c) for c in frame.columns], label_column, path.name)
    features = frame[feature_names]
    numeric = features.apply(pd.to_numeric, errors="coerce")
    bad = numeric.isna()
    if bad.to_numpy().any():
        row, col = np.argwhere(bad.to_numpy())[0]
        value = features.iat[row, col]
        what = "a missing value" if value.strip() == "" else f"the non-numeric value {value!r}"
        raise StepInputError(
            f"feature column {feature_names[col]!r} has {what} at data row {row + 1} of {path.name}; "
            "every feature must be a number (a column that is no feature goes in IgnoreColumns, or in IdColumns "
            "if it identifies the record)"
        )
    labels = frame[label_column].str.strip().to_numpy()
    if (labels == "").any():
        row = int(np.argmax(labels == ""))
        raise StepInputError(f"label column {label_column!r} is empty at data row {row + 1} of {path.name}")
    return Table(numeric.to_numpy(dtype=np.float64), labels, feature_names, label_column, left_out)


def _load_npy(path: Path, label_column: str, choice: ColumnChoice) -> Table:
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
    labels = array[:, index]
    columns = [f"f{i}" for i in range(x.shape[1])]  # NPY columns have no names: f0, f1, … (label left out)
    names, left_out = choice.select(columns, str(index), path.name)
    x = x[:, [columns.index(name) for name in names]]
    if not np.isfinite(x).all():
        row, col = np.argwhere(~np.isfinite(x))[0]
        raise StepInputError(
            f"feature column {names[col]} has a missing or infinite value at row {row + 1} of {path.name}"
        )
    return Table(x, labels, names, str(index), left_out)
