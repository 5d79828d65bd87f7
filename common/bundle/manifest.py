"""The manifest of a bundle: its parts, its JSON form and the validator every role reads it through.

A request bundle goes from the batch owner to the endpoint under ``inbox/<owner>/<bundle id>/``; the result bundle
mirrors it under ``outbox/<owner>/<bundle id>/``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from common.bundle.schema import (
    BUNDLE_ID,
    FORMAT,
    FORMAT_VERSION,
    MAX_EVALUATION_KEY_BYTES,
    MAX_KEY_LENGTH,
    MAX_MANIFEST_BYTES,
    MAX_SAMPLES_PER_SHARD,
    MAX_SHARD_BYTES,
    MAX_SHARDS,
    MAX_TOTAL_SAMPLES,
    SHA256,
    SHARD_FOLDER,
    BundleError,
    Fields,
    check_relative_key,
    load_json,
)
from common.bundle.shards import ShardKind, min_shard_bytes
from common.versions import VERSION_FIELDS

Kind = Literal["request", "result"]

_PACKAGE_ARN = re.compile(
    r"^arn:aws[a-z-]*:sagemaker:[a-z0-9-]+:[0-9]{12}:model-package/(?P<group>[A-Za-z0-9-]{1,63})/(?P<version>[0-9]{1,9})$"
)
_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z$")
_VERSION = re.compile(r"^[0-9][0-9A-Za-z.+-]{0,31}$")
HEADER_FIELDS = (  # every bundle's manifest, whichever path serves it
    "format",
    "format_version",
    "kind",
    "bundle_id",
    "created_at",
    "model",
    "versions",
    "shards",
    "total_samples",
    "request",
)
_MANIFEST_FIELDS = (*HEADER_FIELDS, "evaluation_key")


@dataclass(frozen=True)
class ModelRef:
    package_arn: str
    package_group: str
    package_version: int


@dataclass(frozen=True)
class KeyRef:
    sha256: str
    uri: str
    size: int


@dataclass(frozen=True)
class ShardEntry:
    index: int
    key: str
    samples: int
    sha256: str
    size: int


@dataclass(frozen=True)
class Manifest:
    kind: Kind
    bundle_id: str
    created_at: str
    model: ModelRef
    versions: dict[str, str]
    evaluation_key: KeyRef
    shards: tuple[ShardEntry, ...]
    request_manifest_sha256: str | None = None  # result bundles only: the request manifest they answer

    @property
    def total_samples(self) -> int:
        return sum(s.samples for s in self.shards)

    def to_dict(self) -> dict[str, Any]:
        header = ManifestHeader(
            self.kind, self.bundle_id, self.created_at, self.model, self.versions, self.shards,
            self.request_manifest_sha256,
        )  # fmt: skip
        key = self.evaluation_key
        return {**header.to_dict(), "evaluation_key": {"sha256": key.sha256, "uri": key.uri, "size": key.size}}

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True).encode()

    def shard(self, index: int) -> ShardEntry:
        for entry in self.shards:
            if entry.index == index:
                return entry
        raise BundleError("shard_index", f"bundle {self.bundle_id} has no shard {index}", "unknown_shard")


def shard_key(index: int, kind: ShardKind = "ciphertexts") -> str:
    """The object key of shard ``index`` relative to its bundle's prefix."""
    return f"{SHARD_FOLDER}/{index:05d}.{'fhe' if kind == 'ciphertexts' else 'out'}"


def package_ref(package_arn: str) -> ModelRef:
    match = _PACKAGE_ARN.match(package_arn or "")
    if not match:
        raise BundleError("model.package_arn", f"not a versioned model package ARN: {package_arn!r}")
    return ModelRef(package_arn, match["group"], int(match["version"]))


def model_field(top: Fields) -> ModelRef:
    fields = Fields(top.get("model"), "model", ("package_arn", "package_group", "package_version"))
    model = package_ref(fields.string("package_arn", _PACKAGE_ARN, 256))
    if fields.string("package_group", max_length=63) != model.package_group:
        raise BundleError("model.package_group", "does not match the model package ARN", "model_mismatch")
    if fields.integer("package_version", 1, 999_999_999) != model.package_version:
        raise BundleError("model.package_version", "does not match the model package ARN", "model_mismatch")
    return model


def shards_field(top: Fields, min_bytes: Callable[[int], int] = min_shard_bytes) -> tuple[ShardEntry, ...]:
    """The manifest's shards; ``min_bytes(samples)`` is the smallest object that can hold that many samples."""
    raw_shards = top.get("shards")
    if not isinstance(raw_shards, list):
        raise BundleError("shards", f"must be a list, not {type(raw_shards).__name__}")
    if not raw_shards:
        raise BundleError("shards", "is empty: a bundle holds at least one shard")
    if len(raw_shards) > MAX_SHARDS:
        problem = f"has {len(raw_shards)} entries, over the limit of {MAX_SHARDS} shards a bundle"
        raise BundleError("shards", problem, "too_large")
    shards = []
    seen_keys: set[str] = set()
    for position, raw in enumerate(raw_shards):
        fields = Fields(raw, f"shards[{position}]", ("index", "key", "samples", "sha256", "size"))
        index = fields.integer("index", 0, MAX_SHARDS - 1)
        if index != position:
            raise BundleError(fields.name("index"), f"is {index}; shards are numbered 0, 1, 2… in order")
        key = check_relative_key(fields.string("key", max_length=MAX_KEY_LENGTH), fields.name("key"))
        if key in seen_keys:
            raise BundleError(fields.name("key"), f"{key!r} is used by an earlier shard")
        seen_keys.add(key)
        samples = fields.integer("samples", 1, MAX_SAMPLES_PER_SHARD)
        size = fields.integer("size", min_bytes(1), MAX_SHARD_BYTES)
        if size < min_bytes(samples):
            raise BundleError(fields.name("size"), f"{size} bytes cannot hold {samples} samples")
        shards.append(ShardEntry(index, key, samples, fields.string("sha256", SHA256, 64), size))
    return tuple(shards)


@dataclass(frozen=True)
class ManifestHeader:
    """What every bundle's manifest holds, whichever path serves it (FHE here, the enclave in ``enclave_manifest``)."""

    kind: Kind
    bundle_id: str
    created_at: str
    model: ModelRef
    versions: dict[str, str]
    shards: tuple[ShardEntry, ...]
    request_manifest_sha256: str | None

    def to_dict(self) -> dict[str, Any]:
        """The common part's JSON form; each path adds its own section."""
        data: dict[str, Any] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "bundle_id": self.bundle_id,
            "created_at": self.created_at,
            "model": {
                "package_arn": self.model.package_arn,
                "package_group": self.model.package_group,
                "package_version": self.model.package_version,
            },
            "versions": dict(self.versions),
            "shards": [
                {"index": s.index, "key": s.key, "samples": s.samples, "sha256": s.sha256, "size": s.size}
                for s in self.shards
            ],
            "total_samples": sum(s.samples for s in self.shards),
        }
        if self.kind == "result":
            data["request"] = {"bundle_id": self.bundle_id, "manifest_sha256": self.request_manifest_sha256}
        return data


def read_header(
    data: bytes | str | Mapping[str, Any], allowed: Sequence[str], min_bytes: Callable[[int], int]
) -> tuple[Fields, ManifestHeader]:
    """The manifest's object (only ``allowed`` fields) and its common part, validated."""
    top = Fields(load_json(data, "manifest", MAX_MANIFEST_BYTES), "", allowed)
    if top.get("format") != FORMAT:
        raise BundleError("format", f"must be {FORMAT!r}, got {str(top.get('format'))[:40]!r}")
    version = top.integer("format_version", 1, 1_000_000)
    if version != FORMAT_VERSION:
        raise BundleError("format_version", f"version {version} is not supported (this reads {FORMAT_VERSION})")
    kind = top.string("kind", max_length=16)
    if kind not in ("request", "result"):
        raise BundleError("kind", f"must be 'request' or 'result', got {kind!r}")
    bundle_id = top.string("bundle_id", BUNDLE_ID, 64)
    created_at = top.string("created_at", _TIMESTAMP, 32)
    model = model_field(top)
    version_fields = Fields(top.get("versions"), "versions", VERSION_FIELDS)
    versions = {name: version_fields.string(name, _VERSION, 32) for name in VERSION_FIELDS}
    shards = shards_field(top, min_bytes)
    total = sum(s.samples for s in shards)
    if total > MAX_TOTAL_SAMPLES:
        raise BundleError("total_samples", f"{total} samples is more than {MAX_TOTAL_SAMPLES}", "too_large")
    if top.integer("total_samples", 1, MAX_TOTAL_SAMPLES) != total:
        raise BundleError("total_samples", f"must equal the sum of the shards' samples ({total})")
    request_sha = None
    if kind == "result":
        request = Fields(top.get("request"), "request", ("bundle_id", "manifest_sha256"))
        if request.string("bundle_id", BUNDLE_ID, 64) != bundle_id:
            raise BundleError("request.bundle_id", "must equal bundle_id")
        request_sha = request.string("manifest_sha256", SHA256, 64)
    elif "request" in top.data:
        raise BundleError("request", "only a result manifest names a request")
    header = ManifestHeader(kind, bundle_id, created_at, model, versions, shards, request_sha)  # type: ignore[arg-type]
    return top, header


def parse_manifest(data: bytes | str | Mapping[str, Any]) -> Manifest:
    """Validate an FHE bundle's manifest (bytes, text or an already-decoded object) and return it typed."""
    loaded = load_json(data, "manifest", MAX_MANIFEST_BYTES)
    if "enclave" in loaded:
        raise BundleError("enclave", "names an enclave bundle, which the FHE path does not serve", "wrong_path")
    top, header = read_header(loaded, _MANIFEST_FIELDS, min_shard_bytes)
    key_fields = Fields(top.get("evaluation_key"), "evaluation_key", ("sha256", "uri", "size"))
    key = KeyRef(
        sha256=key_fields.string("sha256", SHA256, 64),
        uri=key_fields.s3_uri("uri"),
        size=key_fields.integer("size", 1, MAX_EVALUATION_KEY_BYTES),
    )
    return Manifest(
        header.kind,
        header.bundle_id,
        header.created_at,
        header.model,
        header.versions,
        key,
        header.shards,
        header.request_manifest_sha256,
    )
