"""The local SageMaker served in-process over HTTP on loopback, and boto3 clients pointed at it whose every
response is checked against botocore's model of its operation (``service_model_check.py``)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
from service_model_check import ResponseLog

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
