"""What the local SageMaker's parts share: its store and registry, its state folder, its configuration (account,
region, timings), the AWS clients it calls and the runtime that runs containers."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aws_emulators.sagemaker.aws_clients import AwsClients
from aws_emulators.sagemaker.configuration import Configuration
from aws_emulators.sagemaker.container_runtime import Runtime
from aws_emulators.sagemaker.registry import Registry
from aws_emulators.sagemaker.store import Store


def timestamp() -> float:
    """The time the API reports (seconds since the epoch)."""
    return time.time()


@dataclass(frozen=True)
class Backend:
    store: Store
    registry: Registry
    state_dir: Path
    configuration: Configuration
    runtime: Runtime
    aws: AwsClients

    @property
    def arn_prefix(self) -> str:
        return self.configuration.arn_prefix

    @property
    def region(self) -> str:
        return self.configuration.region

    def s3(self) -> Any:
        """An S3 client under this server's own credentials (pipeline definitions, jobs' inputs and outputs)."""
        return self.aws.client("s3")
