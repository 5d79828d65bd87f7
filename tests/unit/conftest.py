"""Fixtures shared by unit tests."""

from __future__ import annotations

import os
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from moto import mock_aws

from common import aws

UNIT_BUCKET = "fhe-bundles-unit"
UNIT_OWNER = "clinic-a"  # the batch owner of the unit tests' bundles
# Where a local stack's clients are pointed: a unit test never reaches a server, not even the stack an integration
# test of the same session still runs (its session fixture stops it only at the end).
_STACK_SETTINGS = (
    "AWS_CA_BUNDLE",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "FHE_ESTIMATE_TABLE",  # the local stack's table: unit tests read the shipped one
)


@pytest.fixture(autouse=True)
def no_stack(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("AWS_ENDPOINT_URL")] + list(_STACK_SETTINGS):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """An S3 client on moto (in-process, no server) with the bucket ``UNIT_BUCKET``."""
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    with mock_aws():
        client = aws.client("s3")
        client.create_bucket(Bucket=UNIT_BUCKET)
        yield client


@pytest.fixture(scope="session")
def breast_cancer_splits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Preprocess step's output for breast cancer (label ``label``, a quarter held out, seed 3): ``train/``,
    ``test/``, ``preprocessing/``."""
    from containers.training.data import builtin_dataset_csv
    from containers.training.preprocess import preprocess

    root = tmp_path_factory.mktemp("breast-cancer")
    source = builtin_dataset_csv("breast_cancer", root / "in" / "bc.csv")
    preprocess(source.parent, root / "out", "label", 0.25, 3)
    return root / "out"


def evaluated(model_dir: Path, splits: Path, out: Path, client_output: Path | None = None) -> dict[str, Any]:
    """The Evaluate step's report on a trained model folder, packed as SageMaker hands it over (one FHE sample)."""
    from containers.training.evaluate import evaluate

    model_input = out / "model-input"
    model_input.mkdir()
    with tarfile.open(model_input / "model.tar.gz", "w:gz") as tar:
        for path in model_dir.iterdir():
            tar.add(path, arcname=path.name)
    return evaluate(model_input, splits / "train", splits / "test", out / "evaluation", 1, client_output)
