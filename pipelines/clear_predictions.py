"""What encrypted inference must reproduce, for ML ops: a registered version's clear (quantized) predictions.
``fhe-pipeline predict --package-arn ARN --dataset records.csv`` prints them, so a version can be checked on
records before and after it serves (the demo, the benchmarks and the tests compare the decrypted results with
these). It downloads the package's ``model.tar.gz``, which a batch owner never sees."""

from __future__ import annotations

import csv
import tempfile
from pathlib import Path

import numpy as np
import numpy.typing as npt

from common import artifacts, aws
from common.archives import extract_tar
from common.enclave_model import EnclaveModelRecord
from common.model_package import describe
from common.preprocessing import PreprocessingRecord
from common.s3uri import S3Uri


class PredictionError(ValueError):
    """Records the model cannot read."""


def download_model(package_arn: str, folder: Path) -> Path:
    """The model package's ``model.tar.gz``, extracted into ``folder``."""
    package = describe(aws.client("sagemaker"), package_arn)
    uri = S3Uri.parse(package["InferenceSpecification"]["Containers"][0]["ModelDataUrl"])
    folder.mkdir(parents=True, exist_ok=True)
    aws.client("s3").download_file(uri.bucket, uri.key, str(folder / "model.tar.gz"))
    extract_tar(folder / "model.tar.gz", folder)
    (folder / "model.tar.gz").unlink()
    return folder


def read_records(path: Path, feature_names: list[str]) -> npt.NDArray[np.float64]:
    """The feature columns of a CSV file, by name and in the model's order; other columns are left out."""
    with path.open(newline="") as source:
        reader = csv.DictReader(source, skipinitialspace=True)
        missing = [name for name in feature_names if name not in (reader.fieldnames or [])]
        if missing:
            raise PredictionError(f"{path.name} lacks the feature column(s) {', '.join(missing[:5])}")
        rows = []
        for number, row in enumerate(reader, start=1):
            try:
                rows.append([float(row[name]) for name in feature_names])
            except ValueError:
                raise PredictionError(f"data row {number} of {path.name} has a feature that is not a number") from None
    if not rows:
        raise PredictionError(f"{path.name} has no rows")
    return np.array(rows, dtype=np.float64)


def clear_classes(
    package_arn: str, x: npt.NDArray[np.float64] | None = None, *, csv_path: Path | None = None
) -> list[str]:
    """The clear model's class names for ``x``, or for the records of ``csv_path``: what FHE (the quantized model
    in clear) or the enclave (the float model, by the enclave's own loader) must reproduce."""
    with tempfile.TemporaryDirectory(prefix="fhe-model-") as scratch:
        folder = download_model(package_arn, Path(scratch))
        record = PreprocessingRecord.from_json((folder / artifacts.PREPROCESSING_JSON).read_text())
        if x is None:
            if csv_path is None:
                raise PredictionError("give the records: an array or a CSV file")
            x = read_records(csv_path, record.feature_names)
        prepared = record.transform(x)
        if (folder / artifacts.ENCLAVE_MODEL_JSON).exists():
            from client.enclave_bundle import class_probabilities
            from containers.enclave.models import load_model

            kept, content = EnclaveModelRecord.load(folder)
            predicted = load_model(kept.format, content).predict(prepared.astype(np.float64))
            return [record.classes[int(c)] for c in class_probabilities(predicted, len(record.classes)).argmax(1)]
        from concrete.ml.common.serialization.loaders import loads

        model = loads((folder / artifacts.MODEL_JSON).read_text())
        return [record.classes[int(c)] for c in model.predict(prepared, fhe="disable")]
