"""Fixtures shared by unit tests."""

from __future__ import annotations

import os
from collections.abc import Iterator
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
