"""ML ops' look at a registered model: its ``model.tar.gz`` extracted, and the predictions of its clear
(quantized) model, which encrypted inference must reproduce. A batch owner never sees either."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import numpy.typing as npt

from common import artifacts, aws
from common.archives import extract_tar
from common.model_package import describe
from common.preprocessing import PreprocessingRecord
from common.s3uri import S3Uri


def download_model(package_arn: str, folder: Path) -> Path:
    """The model package's ``model.tar.gz``, extracted into ``folder``."""
    package = describe(aws.client("sagemaker"), package_arn)
    uri = S3Uri.parse(package["InferenceSpecification"]["Containers"][0]["ModelDataUrl"])
    folder.mkdir(parents=True, exist_ok=True)
    aws.client("s3").download_file(uri.bucket, uri.key, str(folder / "model.tar.gz"))
    extract_tar(folder / "model.tar.gz", folder)
    (folder / "model.tar.gz").unlink()
    return folder


def clear_classes(package_arn: str, x: npt.NDArray[np.float64]) -> list[str]:
    """The clear (quantized) model's class names for ``x``: what FHE must reproduce."""
    from concrete.ml.common.serialization.loaders import loads

    with tempfile.TemporaryDirectory(prefix="fhe-model-") as scratch:
        folder = download_model(package_arn, Path(scratch))
        model = loads((folder / artifacts.MODEL_JSON).read_text())
        record = PreprocessingRecord.from_json((folder / artifacts.PREPROCESSING_JSON).read_text())
        return [record.classes[int(c)] for c in model.predict(record.transform(x), fhe="disable")]
