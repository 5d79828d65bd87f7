"""The endpoint's wire messages for one shard: the request the workflow sends and the result it answers."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from common.bundle.schema import (
    BUNDLE_ID,
    FORMAT_VERSION,
    MAX_MESSAGE_BYTES,
    MAX_SAMPLES_PER_SHARD,
    MAX_SHARD_BYTES,
    MAX_SHARDS,
    SHA256,
    BundleError,
    Fields,
    load_json,
)

SHARD_REQUEST = "fhe-shard"


@dataclass(frozen=True)
class ShardRequest:
    manifest_uri: str
    shard_index: int
    result_uri: str

    def to_json(self) -> bytes:
        body = {"fhe_request": SHARD_REQUEST, "format_version": FORMAT_VERSION, **asdict(self)}
        return json.dumps(body, sort_keys=True).encode()


def parse_shard_request(data: bytes | str | Mapping[str, Any]) -> ShardRequest:
    fields = Fields(
        load_json(data, "request", MAX_MESSAGE_BYTES),
        "",
        ("fhe_request", "format_version", "manifest_uri", "shard_index", "result_uri"),
    )
    if fields.get("fhe_request") != SHARD_REQUEST:
        raise BundleError("fhe_request", f"must be {SHARD_REQUEST!r}")
    if fields.integer("format_version", 1, 1_000_000) != FORMAT_VERSION:
        raise BundleError("format_version", f"only version {FORMAT_VERSION} is supported")
    return ShardRequest(
        manifest_uri=fields.s3_uri("manifest_uri"),
        shard_index=fields.integer("shard_index", 0, MAX_SHARDS - 1),
        result_uri=fields.s3_uri("result_uri"),
    )


@dataclass(frozen=True)
class ShardResult:
    """What the endpoint (or the enclave fleet's parent) answers for a shard request: where the result shard is, its
    checks, and how long the instance worked on it: ``seconds`` from the request read to the result written,
    ``fhe_seconds`` of it in FHE evaluation (0 on the enclave path). Usage per owner is billed from these
    (audit/usage.py); an answer from a server that does not measure them has None."""

    bundle_id: str
    shard_index: int
    result_uri: str
    samples: int
    sha256: str
    size: int
    seconds: float | None = None
    fhe_seconds: float | None = None

    def to_json(self) -> bytes:
        body = {k: v for k, v in asdict(self).items() if v is not None}
        return json.dumps(body, sort_keys=True).encode()


MAX_SHARD_SECONDS = 7 * 24 * 3600.0  # longer than any shard may run (the workflow's limit is far shorter)
_TIMED = ("seconds", "fhe_seconds")


def parse_shard_result(data: bytes | str | Mapping[str, Any]) -> ShardResult:
    fields = Fields(
        load_json(data, "shard_result", MAX_MESSAGE_BYTES),
        "",
        ("bundle_id", "shard_index", "result_uri", "samples", "sha256", "size", *_TIMED),
    )
    timed = {name: fields.number(name, 0.0, MAX_SHARD_SECONDS) for name in _TIMED if name in fields.data}
    return ShardResult(
        bundle_id=fields.string("bundle_id", BUNDLE_ID, 64),
        shard_index=fields.integer("shard_index", 0, MAX_SHARDS - 1),
        result_uri=fields.s3_uri("result_uri"),
        samples=fields.integer("samples", 1, MAX_SAMPLES_PER_SHARD),
        sha256=fields.string("sha256", SHA256, 64),
        size=fields.integer("size", 1, MAX_SHARD_BYTES),
        **timed,
    )
