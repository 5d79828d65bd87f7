"""The typed inputs of the handlers: what the state machine passes between its states."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from common.workflow import BundleRef, EventError, as_object, text_field


@dataclass(frozen=True)
class ShardTask:
    """One Map iteration: shard ``shard_index`` of ``bundle`` on ``endpoint``, which serves ``model_package_arn``,
    completed through ``task_token``."""

    bundle: BundleRef
    endpoint: str
    model_package_arn: str
    shard_index: int
    task_token: str

    @classmethod
    def from_dict(cls, data: Any) -> ShardTask:
        data = as_object(data, "the shard task")
        index = data.get("shard_index")
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            raise EventError(f"shard_index must be a non-negative integer, got {index!r}")
        return cls(
            BundleRef.from_dict(data.get("bundle")),
            text_field(data, "endpoint"),
            text_field(data, "model_package_arn"),
            index,
            text_field(data, "task_token"),
        )


@dataclass(frozen=True)
class Failure:
    """What a Catch hands to Quarantine: the stage that failed, Step Functions' error name and its cause."""

    bundle: BundleRef
    stage: str
    error: str
    cause: str
    execution: str

    @classmethod
    def from_dict(cls, data: Any) -> Failure:
        data = as_object(data, "the failure")
        failure = as_object(data.get("failure"), "failure (with Error and Cause)")
        return cls(
            BundleRef.from_dict(data.get("bundle")),
            text_field(data, "stage"),
            str(failure.get("Error") or "States.Unknown"),
            str(failure.get("Cause") or ""),
            str(data.get("execution") or ""),
        )
