"""The typed inputs of the handlers: what the state machine passes between its states."""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass
from typing import Any

from common.bundle.schema import BUNDLE_ID_PATTERN, MANIFEST_NAME
from common.bundle_store import INBOX_PREFIX
from common.s3uri import S3Uri

_MANIFEST_KEY = re.compile(rf"^{INBOX_PREFIX}/(?P<bundle>{BUNDLE_ID_PATTERN})/{re.escape(MANIFEST_NAME)}$")


class EventError(ValueError):
    """An event or state input that does not have the shape this workflow produces."""


def _text(data: dict[str, Any], name: str) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value:
        raise EventError(f"{name} must be a non-empty string, got {value!r}")
    return value


def bundle_id_of(manifest_key: str) -> str | None:
    """The bundle id of ``inbox/<bundle id>/manifest.json``; None for any other key."""
    match = _MANIFEST_KEY.match(manifest_key)
    return match["bundle"] if match else None


@dataclass(frozen=True)
class BundleRef:
    """One dropped bundle: its manifest object and the ETag of the version that was dropped."""

    bucket: str
    bundle_id: str
    manifest_key: str
    etag: str

    @classmethod
    def from_dict(cls, data: Any) -> BundleRef:
        if not isinstance(data, dict):
            raise EventError(f"bundle must be an object, got {type(data).__name__}")
        ref = cls(_text(data, "bucket"), _text(data, "bundle_id"), _text(data, "manifest_key"), _text(data, "etag"))
        if bundle_id_of(ref.manifest_key) != ref.bundle_id:
            raise EventError(f"{ref.manifest_key} is not the manifest of bundle {ref.bundle_id}")
        return ref

    @property
    def manifest_uri(self) -> S3Uri:
        return S3Uri(self.bucket, self.manifest_key)

    @property
    def execution_name(self) -> str:
        """Step Functions refuses a second execution of one name: the name is the bundle + ETag."""
        digest = hashlib.sha256(self.etag.encode()).hexdigest()[:12]
        return f"{self.bundle_id}-{digest}"

    @staticmethod
    def bundle_of_execution(execution_name: str) -> str:
        """The bundle id an execution name (``execution_name``) stands for."""
        return execution_name.rsplit("-", 1)[0]

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass(frozen=True)
class ShardTask:
    """One Map iteration: shard ``shard_index`` of ``bundle`` on ``endpoint``, completed through ``task_token``."""

    bundle: BundleRef
    endpoint: str
    shard_index: int
    task_token: str

    @classmethod
    def from_dict(cls, data: Any) -> ShardTask:
        if not isinstance(data, dict):
            raise EventError("the shard task must be an object")
        index = data.get("shard_index")
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            raise EventError(f"shard_index must be a non-negative integer, got {index!r}")
        return cls(BundleRef.from_dict(data.get("bundle")), _text(data, "endpoint"), index, _text(data, "task_token"))


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
        if not isinstance(data, dict):
            raise EventError("the failure must be an object")
        failure = data.get("failure")
        if not isinstance(failure, dict):
            raise EventError("failure must be an object with Error and Cause")
        return cls(
            BundleRef.from_dict(data.get("bundle")),
            _text(data, "stage"),
            str(failure.get("Error") or "States.Unknown"),
            str(failure.get("Cause") or ""),
            str(data.get("execution") or ""),
        )
