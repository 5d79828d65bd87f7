"""The local SageMaker served in-process over HTTP on loopback, reached through boto3 clients whose every response
is checked against botocore's model of its operation (``service_model.py``): a test fails when one does not fit."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest
from service_model import ResponseLog

from aws_emulators.sagemaker.configuration import Configuration
from aws_emulators.sagemaker.server import LocalSageMaker, make_handler

REGION = "us-east-1"
ROLE = "arn:aws:iam::000000000000:role/pipeline"
# Where the AWS the emulator calls (STS, S3, CloudWatch) would be: nothing listens there, so a call fails at once.
NO_AWS = "http://127.0.0.1:9"


@dataclass
class Served:
    service: LocalSageMaker
    server: ThreadingHTTPServer
    responses: ResponseLog

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def client(self, name: str, **credentials: str) -> Any:
        """A boto3 client of ``name`` (sagemaker, sagemaker-runtime, application-autoscaling) pointed here."""
        credentials = credentials or {"aws_access_key_id": "test", "aws_secret_access_key": "test"}
        client = boto3.client(name, region_name=REGION, endpoint_url=self.url, **credentials)
        return self.responses.watch(client)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.service.endpoints.shutdown()
        self.service.store.close()


def serve(state_dir: Path, configuration: Configuration | None = None, **options: Any) -> Served:
    service = LocalSageMaker(state_dir, configuration or Configuration(region=REGION), **options)
    service.resume()
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(service))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return Served(service, server, ResponseLog())


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
