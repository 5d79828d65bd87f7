"""A bundle's usage: how long the serving instances worked on its shards, summed from their shard results (each
result's ``seconds`` and ``fhe_seconds``, as the server that served the shard measured them). What the bundle's
owner is billed for (audit/usage.py).

Assemble writes a delivered bundle's usage record beside its result manifest (``outbox/<owner>/<bundle id>/
usage.json``: the owner may read what it is billed for) and names its sha256 in the "Bundle Completed" event;
Quarantine puts the time of the shards that had run into the quarantine record. The recorder reads either from the
object the workflow wrote, never from the event. The result manifest itself carries none of it: its format is what
owners' clients read, strictly."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from common.bundle.messages import ShardResult
from common.bundle.schema import MAX_MESSAGE_BYTES, MAX_SHARDS, BundleError, Fields, load_json
from common.bundle.store import BundleLayout, WrittenRecord, put_record

MAX_SERVED_SECONDS = 1e9  # a bundle's summed shard seconds; far beyond any real one
FIELDS = ("shards", "serving_seconds", "fhe_seconds")


@dataclass(frozen=True)
class ServedUsage:
    """How long the serving instances worked on a bundle's shards, summed from their shard results: what the
    bundle's owner is billed for (audit/usage.py). Assemble writes it as the bundle's usage record beside its result
    manifest; Quarantine puts the shards that ran into the quarantine record."""

    shards: int
    serving_seconds: float
    fhe_seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "shards": self.shards,
            "serving_seconds": round(self.serving_seconds, 3),
            "fhe_seconds": round(self.fhe_seconds, 3),
        }

    @classmethod
    def from_dict(cls, data: Any, path: str = "usage") -> ServedUsage:
        fields = Fields(data, path, FIELDS)
        return cls(
            shards=fields.integer("shards", 0, MAX_SHARDS),
            serving_seconds=fields.number("serving_seconds", 0.0, MAX_SERVED_SECONDS),
            fhe_seconds=fields.number("fhe_seconds", 0.0, MAX_SERVED_SECONDS),
        )


def served_usage(results: Sequence[ShardResult]) -> ServedUsage:
    """The time the servers reported for ``results``, summed; a result from a server that did not measure it (one
    older than these fields) counts no time."""
    return ServedUsage(len(results), sum(r.seconds or 0.0 for r in results), sum(r.fhe_seconds or 0.0 for r in results))


def write_usage_record(s3: Any, layout: BundleLayout, bundle_id: str, usage: ServedUsage) -> WrittenRecord:
    """The delivered bundle's usage record, beside its result manifest."""
    body = json.dumps({"bundle_id": bundle_id, **usage.to_dict()}, indent=2, sort_keys=True).encode()
    return put_record(s3, layout.usage_record(bundle_id), body)


def parse_usage_record(data: bytes, bundle_id: str) -> ServedUsage:
    """A usage record of ``bundle_id``, validated."""
    record = load_json(data, "usage", MAX_MESSAGE_BYTES)
    if record.pop("bundle_id", None) != bundle_id:
        raise BundleError("usage.bundle_id", f"is not {bundle_id}")
    return ServedUsage.from_dict(record)
