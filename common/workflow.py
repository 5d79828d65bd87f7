"""What the batch workflow's executions carry and how they are named, shared by the Lambdas that run it, the
auditor who reads it back and whoever follows a bundle: the dropped bundle (:class:`BundleRef`), the execution-name
rule, and the machine-readable reason of a failure (:class:`FailureReason`)."""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from common.bundle.schema import BUNDLE_ID_PATTERN, MANIFEST_NAME, OWNER_PATTERN
from common.bundle.store import INBOX_PREFIX, BundleLayout
from common.s3uri import S3Uri

_MANIFEST_KEY = re.compile(
    rf"^{INBOX_PREFIX}/(?P<owner>{OWNER_PATTERN})/(?P<bundle>{BUNDLE_ID_PATTERN})/{re.escape(MANIFEST_NAME)}$"
)
MAX_MESSAGE = 4000  # characters of a failure's message kept in its reason
# How long a bundle's execution may run: the state machine definition's TimeoutSeconds (a test holds them equal).
BUNDLE_TIME_LIMIT_SECONDS = 7 * 24 * 3600


class EventError(ValueError):
    """An event or state input that does not have the shape this workflow produces."""


def as_object(data: Any, what: str) -> dict[str, Any]:
    """``data`` if it is a JSON object; else an EventError naming ``what``."""
    if not isinstance(data, dict):
        raise EventError(f"{what} must be an object, got {type(data).__name__}")
    return data


def text_field(data: dict[str, Any], name: str) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value:
        raise EventError(f"{name} must be a non-empty string, got {value!r}")
    return value


def bundle_of_key(manifest_key: str) -> tuple[str, str] | None:
    """The owner and bundle id of ``inbox/<owner>/<bundle id>/manifest.json``; None for any other key."""
    match = _MANIFEST_KEY.match(manifest_key)
    return (match["owner"], match["bundle"]) if match else None


def bundle_path(owner: str, bundle_id: str) -> str:
    """How the audit log and report name a bundle: ids are the owners' to choose, so the owner comes with it."""
    return f"{owner}/{bundle_id}"


@dataclass(frozen=True)
class BundleRef:
    """One dropped bundle: its manifest object and the ETag of the version that was dropped."""

    bucket: str
    bundle_id: str
    manifest_key: str
    etag: str

    @classmethod
    def from_dict(cls, data: Any) -> BundleRef:
        data = as_object(data, "bundle")
        ref = cls(*(text_field(data, name) for name in ("bucket", "bundle_id", "manifest_key", "etag")))
        found = bundle_of_key(ref.manifest_key)
        if found is None or found[1] != ref.bundle_id:
            raise EventError(f"{ref.manifest_key} is not the manifest of bundle {ref.bundle_id}")
        return ref

    @property
    def owner(self) -> str:
        """The batch owner, the folder the manifest was dropped in (only its role can write there)."""
        found = bundle_of_key(self.manifest_key)
        if found is None:
            raise EventError(f"{self.manifest_key} is not an inbox manifest")
        return found[0]

    @property
    def layout(self) -> BundleLayout:
        return BundleLayout(self.bucket, self.owner)

    @property
    def path(self) -> str:
        return bundle_path(self.owner, self.bundle_id)

    @property
    def manifest_uri(self) -> S3Uri:
        return S3Uri(self.bucket, self.manifest_key)

    @property
    def execution_name(self) -> str:
        """Step Functions refuses a second execution of one name: the name is the bundle id and a digest of the
        manifest's key (its owner) and ETag, which fits the 80 characters a name may have."""
        digest = hashlib.sha256(f"{self.manifest_key}\0{self.etag}".encode()).hexdigest()[:12]
        return f"{self.bundle_id}-{digest}"

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def bundle_of_execution(execution_name: str) -> str:
    """The bundle id an execution name (``BundleRef.execution_name``) stands for."""
    return execution_name.rsplit("-", 1)[0]


def execution_bundle(stepfunctions: Any, execution_arn: str) -> BundleRef:
    """The bundle an execution runs, from its input."""
    started = json.loads(stepfunctions.describe_execution(executionArn=execution_arn).get("input") or "{}")
    return BundleRef.from_dict(started.get("bundle"))


def bundle_executions(
    stepfunctions: Any, state_machine_arn: str, bundle_id: str, owner: str | None = None
) -> list[str]:
    """The ARNs of a bundle's executions (each named by the bundle id and a digest); of ``owner``'s bundle of
    that id only, when given (another owner may use the same id)."""
    pages = stepfunctions.get_paginator("list_executions").paginate(stateMachineArn=state_machine_arn)
    named = [
        e["executionArn"] for page in pages for e in page["executions"] if bundle_of_execution(e["name"]) == bundle_id
    ]
    if owner is None:
        return named
    return [arn for arn in named if execution_bundle(stepfunctions, arn).owner == owner]


def executed_states(stepfunctions: Any, execution_arn: str) -> list[str]:
    """The states an execution entered, in order, each once (the Map's iterations repeat theirs)."""
    names: list[str] = []
    pages = stepfunctions.get_paginator("get_execution_history").paginate(executionArn=execution_arn)
    for event in (e for page in pages for e in page["events"]):
        name = event.get("stateEnteredEventDetails", {}).get("name")
        if name and name not in names:
            names.append(name)
    return names


@dataclass(frozen=True)
class FailureReason:
    """Why a bundle failed, as the quarantine record keeps it: the stage, the shard if one, a code to act on, the
    field at fault if one, a message for people, the error name the state machine saw."""

    stage: str
    code: str
    message: str
    field: str | None = None
    shard: int | None = None
    error: str | None = None
    inference_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if self.inference_id is None:
            del data["inference_id"]
        return data

    def to_json(self) -> str:
        """The cause a Lambda raises or hands to ``SendTaskFailure``: what :meth:`from_dict` reads back."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FailureReason | None:
        """A reason record of this workflow's own, or None when ``data`` is something else."""
        if not isinstance(data.get("stage"), str) or not isinstance(data.get("code"), str):
            return None
        shard = data.get("shard")
        return cls(
            stage=data["stage"],
            code=data["code"],
            message=str(data.get("message") or "")[:MAX_MESSAGE],
            field=str(data["field"]) if data.get("field") is not None else None,
            shard=shard if isinstance(shard, int) and not isinstance(shard, bool) else None,
            error=str(data["error"]) if data.get("error") is not None else None,
            inference_id=str(data["inference_id"]) if data.get("inference_id") is not None else None,
        )


@dataclass(frozen=True)
class WaitingShard:
    """A shard the endpoint is working on, in the workflow table under its InferenceId: ``invoke`` writes it before
    invoking, ``notify`` completes its task when the endpoint answers, ``heartbeat`` keeps its wait alive."""

    inference_id: str
    task_token: str
    bucket: str  # the bundle's
    owner: str
    bundle_id: str
    shard_index: int
    endpoint: str
    expiration: int  # epoch seconds; the table's TTL removes an item nobody answered

    PREFIX: ClassVar[str] = "inference#"  # what sets these items apart from the idempotency records sharing the table

    @staticmethod
    def key_of(inference_id: str) -> dict[str, Any]:
        return {"id": {"S": WaitingShard.PREFIX + inference_id}}

    @classmethod
    def waiting(
        cls, task_token: str, bundle: BundleRef, shard_index: int, endpoint: str, inference_id: str, ttl_seconds: int
    ) -> WaitingShard:
        expiration = int(time.time()) + ttl_seconds
        return cls(
            inference_id, task_token, bundle.bucket, bundle.owner, bundle.bundle_id, shard_index, endpoint, expiration
        )

    @property
    def layout(self) -> BundleLayout:
        return BundleLayout(self.bucket, self.owner)

    def to_item(self) -> dict[str, Any]:
        return {
            **self.key_of(self.inference_id),
            "task_token": {"S": self.task_token},
            "bucket": {"S": self.bucket},
            "owner": {"S": self.owner},
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
                owner=item["owner"]["S"],
                bundle_id=item["bundle_id"]["S"],
                shard_index=int(item["shard_index"]["N"]),
                endpoint=item["endpoint"]["S"],
                expiration=int(item["expiration"]["N"]),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise EventError(f"a waiting-shard item lacks or garbles {error}") from None


def waiting_shards(dynamodb: Any, table: str, endpoint: str | None = None) -> list[WaitingShard]:
    """The shards waiting for an endpoint's answer (of ``endpoint`` only, if given), from the workflow table."""
    pages = dynamodb.get_paginator("scan").paginate(
        TableName=table,
        FilterExpression="begins_with(id, :prefix)",
        ExpressionAttributeValues={":prefix": {"S": WaitingShard.PREFIX}},
    )
    shards = [WaitingShard.from_item(item) for page in pages for item in page.get("Items", [])]
    return [shard for shard in shards if endpoint is None or shard.endpoint == endpoint]
