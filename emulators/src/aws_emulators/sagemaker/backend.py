"""What the local SageMaker's parts share: its store and registry, its state folder, the account's ARN prefix
and region, the AWS clients it calls and the runtime that runs containers."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aws_emulators.sagemaker.registry import Registry
from aws_emulators.sagemaker.runtime import Runtime
from aws_emulators.sagemaker.store import Store


def timestamp() -> float:
    """The time the API reports (seconds since the epoch)."""
    return time.time()


@dataclass(frozen=True)
class Backend:
    store: Store
    registry: Registry
    state_dir: Path
    arn_prefix: str
    region: str
    runtime: Runtime
    s3: Callable[[], Any]
