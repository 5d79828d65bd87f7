"""The typed inputs of the handlers: what the state machine passes between its states."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, ClassVar

from common.workflow import BundleRef, EventError, as_object, text_field


@dataclass(frozen=True)
class ShardTask:
    """One Map iteration: shard ``shard_index`` of ``bundle`` on ``endpoint``, completed through ``task_token``."""

    bundle: BundleRef
    endpoint: str
    shard_index: int
    task_token: str

    @classmethod
    def from_dict(cls, data: Any) -> ShardTask:
        data = as_object(data, "the shard task")
        index = data.get("shard_index")
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            raise EventError(f"shard_index must be a non-negative integer, got {index!r}")
        return cls(
            BundleRef.from_dict(data.get("bundle")), text_field(data, "endpoint"), index, text_field(data, "task_token")
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


@dataclass(frozen=True)
class WaitingShard:
    """A shard the endpoint is working on, in the workflow table under its InferenceId: ``invoke`` writes it before
    invoking, ``notify`` completes its task when the endpoint answers, ``heartbeat`` keeps its wait alive."""

    inference_id: str
    task_token: str
    bucket: str  # the bundle's
    bundle_id: str
    shard_index: int
    endpoint: str
    expiration: int  # epoch seconds; the table's TTL removes an item nobody answered

    PREFIX: ClassVar[str] = "inference#"  # what sets these items apart from the idempotency records sharing the table

    @staticmethod
    def key_of(inference_id: str) -> dict[str, Any]:
        return {"id": {"S": WaitingShard.PREFIX + inference_id}}

    @classmethod
    def for_task(cls, task: ShardTask, inference_id: str, ttl_seconds: int) -> WaitingShard:
        expiration = int(time.time()) + ttl_seconds
        bundle = task.bundle
        return cls(
            inference_id, task.task_token, bundle.bucket, bundle.bundle_id, task.shard_index, task.endpoint, expiration
        )

    def to_item(self) -> dict[str, Any]:
        return {
            **self.key_of(self.inference_id),
            "task_token": {"S": self.task_token},
            "bucket": {"S": self.bucket},
            "bundle_id": {"S": self.bundle_id},
            "shard_index": {"N": str(self.shard_index)},
            "endpoint": {"S": self.endpoint},
            "expiration": {"N": str(self.expiration)},
        }

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> WaitingShard:
        try:
            return cls(
                inference_id=item["id"]["S"].removeprefix(cls.PREFIX),
                task_token=item["task_token"]["S"],
                bucket=item["bucket"]["S"],
                bundle_id=item["bundle_id"]["S"],
                shard_index=int(item["shard_index"]["N"]),
                endpoint=item["endpoint"]["S"],
                expiration=int(item["expiration"]["N"]),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise EventError(f"a waiting-shard item lacks or garbles {error}") from None
