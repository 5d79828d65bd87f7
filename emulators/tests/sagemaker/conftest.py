"""Fixtures of the local SageMaker's tests: no AWS reachable, and the server on a fresh state folder whose every
response must fit botocore's model of its operation (``sagemaker_fixtures.py``)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sagemaker_fixtures import NO_AWS, REGION, Served, serve


@pytest.fixture(autouse=True)
def no_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reaches a real AWS or a local stack: every AWS endpoint is a closed loopback port."""
    for name in [n for n in os.environ if n.startswith("AWS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ENDPOINT_URL", NO_AWS)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    """The local SageMaker on a fresh state folder; after the test, every response it gave must have fit."""
    running = serve(tmp_path / "state")
    try:
        yield running
    finally:
        running.stop()
    assert running.responses.errors() == [], "responses that do not fit the service model"
