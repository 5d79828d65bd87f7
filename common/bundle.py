"""Bundle format v1: the manifest and the shard container, and the one validator every role uses.

A *bundle* is a manifest (JSON) plus ciphertext *shards*, each shard holding many samples. A request bundle
goes from the batch owner to the endpoint under ``inbox/<bundle id>/``; the result bundle mirrors it under
``outbox/<bundle id>/``. ``docs/bundle-format.md`` describes the format for people; this module is its
definition for code. It imports no concrete module, so the Lambdas use it as the client and the container do.

Everything read from outside goes through :func:`parse_manifest`, :func:`parse_shard` or
:func:`parse_shard_request`, which raise :class:`BundleError` naming the offending field and nothing else.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any, Literal

from common.versions import LABELS, VersionsRecord

FORMAT = "fhe-batch-bundle"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
SHARD_FOLDER = "shards"
SHARD_REQUEST = "fhe-shard"

# Limits: a manifest or shard beyond them is refused before any work or allocation.
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
MAX_SHARDS = 10_000
MAX_SAMPLES_PER_SHARD = 100_000
MAX_TOTAL_SAMPLES = 10_000_000
MAX_SHARD_BYTES = 1024**3  # SageMaker asynchronous inference's payload ceiling
MAX_CIPHERTEXT_BYTES = 64 * 1024**2
MAX_EVALUATION_KEY_BYTES = 8 * 1024**3
MAX_KEY_LENGTH = 512

# Shard container: magic, format version, kind, sample count, one length per sample, the samples back to back.
SHARD_MAGIC = b"FHEBSHRD"
_SHARD_HEADER = struct.Struct("<8sHHI")
_LENGTH = struct.Struct("<Q")
SHARD_KINDS = {"ciphertexts": 1, "results": 2}

Kind = Literal["request", "result"]
ShardKind = Literal["ciphertexts", "results"]

# "keys" names the folder of evaluation keys under inbox/ (common/bundle_store.py), never a bundle.
BUNDLE_ID_PATTERN = r"(?!keys(?![A-Za-z0-9_-]))[A-Za-z0-9][A-Za-z0-9_-]{2,63}"
_BUNDLE_ID = re.compile(rf"^{BUNDLE_ID_PATTERN}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_KEY_CHARS = re.compile(r"^[A-Za-z0-9._/-]+$")
_PACKAGE_ARN = re.compile(
    r"^arn:aws[a-z-]*:sagemaker:[a-z0-9-]+:[0-9]{12}:model-package/(?P<group>[A-Za-z0-9-]{1,63})/(?P<version>[0-9]{1,9})$"
)
_S3_URI = re.compile(r"^s3://(?P<bucket>[a-z0-9][a-z0-9.-]{1,61}[a-z0-9])/(?P<key>[A-Za-z0-9._/-]{1,1024})$")
_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z$")
_VERSION = re.compile(r"^[0-9][0-9A-Za-z.+-]{0,31}$")


class BundleError(ValueError):
    """A manifest, shard or shard request that breaks the format; ``field`` names where, ``code`` classifies."""

    def __init__(self, field: str, problem: str, code: str = "invalid") -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem
        self.code = code

    def to_dict(self) -> dict[str, str]:
        return {"field": self.field, "code": self.code, "message": str(self)}


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------------------------------------------------
# The manifest


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
            "evaluation_key": {
                "sha256": self.evaluation_key.sha256,
                "uri": self.evaluation_key.uri,
                "size": self.evaluation_key.size,
            },
            "shards": [
                {"index": s.index, "key": s.key, "samples": s.samples, "sha256": s.sha256, "size": s.size}
                for s in self.shards
            ],
            "total_samples": self.total_samples,
        }
        if self.kind == "result":
            data["request"] = {"bundle_id": self.bundle_id, "manifest_sha256": self.request_manifest_sha256}
        return data

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


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate field {key!r}")
        result[key] = value
    return result


def _load_json(data: bytes | str | Mapping[str, Any], what: str, limit: int) -> dict[str, Any]:
    if isinstance(data, Mapping):
        return dict(data)
    if len(data) > limit:
        raise BundleError(what, f"is {len(data)} bytes, more than the {limit} allowed", "too_large")
    try:
        loaded = json.loads(data, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except RecursionError:
        raise BundleError(what, "is nested too deeply", "not_json") from None
    except (ValueError, UnicodeDecodeError) as error:
        raise BundleError(what, f"is not valid JSON ({error})", "not_json") from None
    if not isinstance(loaded, dict):
        raise BundleError(what, f"must be a JSON object, not {type(loaded).__name__}", "not_json")
    return loaded


class _Fields:
    """Typed access to one JSON object, every problem reported as a BundleError naming the field path."""

    def __init__(self, data: Any, path: str, allowed: Sequence[str]) -> None:
        if not isinstance(data, dict):
            raise BundleError(path, f"must be an object, not {type(data).__name__}")
        unknown = sorted(str(k) for k in data if k not in allowed)
        if unknown:
            # A name that is not a plain identifier is shown quoted, so the error always names something.
            shown = unknown[0] if re.fullmatch(r"[A-Za-z0-9_]{1,64}", unknown[0]) else json.dumps(unknown[0][:64])
            raise BundleError(f"{path}.{shown}" if path else shown, "is not a field of this format")
        self.data = data
        self.path = path

    def name(self, field: str) -> str:
        return f"{self.path}.{field}" if self.path else field

    def get(self, field: str) -> Any:
        if field not in self.data:
            raise BundleError(self.name(field), "is missing", "missing_field")
        return self.data[field]

    def string(self, field: str, pattern: re.Pattern[str] | None = None, max_length: int = 2048) -> str:
        value = self.get(field)
        if not isinstance(value, str):
            raise BundleError(self.name(field), f"must be a string, not {type(value).__name__}")
        if len(value) > max_length:
            raise BundleError(self.name(field), f"is longer than {max_length} characters", "too_large")
        if pattern is not None and not pattern.match(value):
            raise BundleError(self.name(field), f"has an invalid value {value[:80]!r}")
        return value

    def integer(self, field: str, minimum: int, maximum: int) -> int:
        value = self.get(field)
        if isinstance(value, bool) or not isinstance(value, int):
            raise BundleError(self.name(field), f"must be an integer, not {type(value).__name__}")
        if value < minimum:
            raise BundleError(self.name(field), f"must be at least {minimum}, got {value}")
        if value > maximum:
            raise BundleError(self.name(field), f"must be at most {maximum}, got {value}", "too_large")
        return value


def check_relative_key(key: str, field: str) -> str:
    """An object key relative to the bundle prefix: plain segments, never absolute, never climbing out."""
    path = PurePosixPath(key)
    if key.startswith("/") or "\\" in key:
        raise BundleError(field, f"{key[:80]!r} must be relative to the bundle prefix", "escapes_prefix")
    if any(part in ("..", ".") for part in key.split("/")):
        raise BundleError(field, f"{key[:80]!r} climbs out of the bundle prefix", "escapes_prefix")
    if not _KEY_CHARS.match(key) or "//" in key or key.endswith("/") or not path.parts:
        raise BundleError(field, f"{key[:80]!r} is not a plain object key (letters, digits, . _ - /)")
    return key


def check_s3_uri(value: str, field: str) -> str:
    match = _S3_URI.match(value)
    if not match:
        raise BundleError(field, f"{value[:80]!r} is not an s3://bucket/key URI")
    if any(part in ("..", ".", "") for part in match["key"].split("/")):
        raise BundleError(field, f"{value[:80]!r} has an empty, '.' or '..' segment", "escapes_prefix")
    return value


def parse_manifest(data: bytes | str | Mapping[str, Any]) -> Manifest:
    """Validate a manifest (bytes, text or an already-decoded object) and return it typed."""
    top = _Fields(
        _load_json(data, "manifest", MAX_MANIFEST_BYTES),
        "",
        (
            "format",
            "format_version",
            "kind",
            "bundle_id",
            "created_at",
            "model",
            "versions",
            "evaluation_key",
            "shards",
            "total_samples",
            "request",
        ),
    )
    if top.get("format") != FORMAT:
        raise BundleError("format", f"must be {FORMAT!r}, got {str(top.get('format'))[:40]!r}")
    version = top.integer("format_version", 1, 1_000_000)
    if version != FORMAT_VERSION:
        raise BundleError("format_version", f"version {version} is not supported (this reads {FORMAT_VERSION})")
    kind = top.string("kind", max_length=16)
    if kind not in ("request", "result"):
        raise BundleError("kind", f"must be 'request' or 'result', got {kind!r}")
    bundle_id = top.string("bundle_id", _BUNDLE_ID, 64)
    created_at = top.string("created_at", _TIMESTAMP, 32)

    model_fields = _Fields(top.get("model"), "model", ("package_arn", "package_group", "package_version"))
    package_arn = model_fields.string("package_arn", _PACKAGE_ARN, 256)
    model = package_ref(package_arn)
    if model_fields.string("package_group", max_length=63) != model.package_group:
        raise BundleError("model.package_group", "does not match the model package ARN", "model_mismatch")
    if model_fields.integer("package_version", 1, 999_999_999) != model.package_version:
        raise BundleError("model.package_version", "does not match the model package ARN", "model_mismatch")

    version_fields = _Fields(top.get("versions"), "versions", ("python", "concrete_python", "concrete_ml"))
    versions = {
        name: version_fields.string(name, _VERSION, 32) for name in ("python", "concrete_python", "concrete_ml")
    }

    key_fields = _Fields(top.get("evaluation_key"), "evaluation_key", ("sha256", "uri", "size"))
    key = KeyRef(
        sha256=key_fields.string("sha256", _SHA256, 64),
        uri=check_s3_uri(key_fields.string("uri", max_length=1100), "evaluation_key.uri"),
        size=key_fields.integer("size", 1, MAX_EVALUATION_KEY_BYTES),
    )

    raw_shards = top.get("shards")
    if not isinstance(raw_shards, list):
        raise BundleError("shards", f"must be a list, not {type(raw_shards).__name__}")
    if not raw_shards:
        raise BundleError("shards", "is empty: a bundle holds at least one shard")
    if len(raw_shards) > MAX_SHARDS:
        raise BundleError("shards", f"has {len(raw_shards)} entries, more than {MAX_SHARDS}", "too_large")
    shards = []
    seen_keys: set[str] = set()
    for position, raw in enumerate(raw_shards):
        fields = _Fields(raw, f"shards[{position}]", ("index", "key", "samples", "sha256", "size"))
        index = fields.integer("index", 0, MAX_SHARDS - 1)
        if index != position:
            raise BundleError(fields.name("index"), f"is {index}; shards are numbered 0, 1, 2… in order")
        shard_key_value = check_relative_key(fields.string("key", max_length=MAX_KEY_LENGTH), fields.name("key"))
        if shard_key_value in seen_keys:
            raise BundleError(fields.name("key"), f"{shard_key_value!r} is used by an earlier shard")
        seen_keys.add(shard_key_value)
        samples = fields.integer("samples", 1, MAX_SAMPLES_PER_SHARD)
        size = fields.integer("size", _SHARD_HEADER.size + _LENGTH.size + 1, MAX_SHARD_BYTES)
        if size < _SHARD_HEADER.size + samples * (_LENGTH.size + 1):
            raise BundleError(fields.name("size"), f"{size} bytes cannot hold {samples} samples")
        shards.append(ShardEntry(index, shard_key_value, samples, fields.string("sha256", _SHA256, 64), size))
    total = sum(s.samples for s in shards)
    if total > MAX_TOTAL_SAMPLES:
        raise BundleError("total_samples", f"{total} samples is more than {MAX_TOTAL_SAMPLES}", "too_large")
    if top.integer("total_samples", 1, MAX_TOTAL_SAMPLES) != total:
        raise BundleError("total_samples", f"must equal the sum of the shards' samples ({total})")

    request_sha = None
    if kind == "result":
        request = _Fields(top.get("request"), "request", ("bundle_id", "manifest_sha256"))
        if request.string("bundle_id", _BUNDLE_ID, 64) != bundle_id:
            raise BundleError("request.bundle_id", "must equal bundle_id")
        request_sha = request.string("manifest_sha256", _SHA256, 64)
    elif "request" in top.data:
        raise BundleError("request", "only a result manifest names a request")
    return Manifest(kind, bundle_id, created_at, model, versions, key, tuple(shards), request_sha)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------------
# The shard container


def encode_shard(items: Sequence[bytes], kind: ShardKind = "ciphertexts") -> bytes:
    if not 1 <= len(items) <= MAX_SAMPLES_PER_SHARD:
        raise BundleError("shard", f"must hold 1 to {MAX_SAMPLES_PER_SHARD} samples, not {len(items)}", "too_large")
    for position, item in enumerate(items):
        if not 1 <= len(item) <= MAX_CIPHERTEXT_BYTES:
            raise BundleError(f"shard.samples[{position}]", f"{len(item)} bytes is outside 1..{MAX_CIPHERTEXT_BYTES}")
    header = _SHARD_HEADER.pack(SHARD_MAGIC, FORMAT_VERSION, SHARD_KINDS[kind], len(items))
    lengths = b"".join(_LENGTH.pack(len(item)) for item in items)
    return header + lengths + b"".join(items)


def parse_shard(
    data: bytes, *, expected_samples: int | None = None, kind: ShardKind = "ciphertexts", field: str = "shard"
) -> list[bytes]:
    """Split a shard object into its samples; refuse anything not exactly as the header announces."""
    if len(data) > MAX_SHARD_BYTES:
        raise BundleError(field, f"is {len(data)} bytes, more than {MAX_SHARD_BYTES}", "too_large")
    if len(data) < _SHARD_HEADER.size:
        raise BundleError(field, f"is truncated: {len(data)} bytes, shorter than its header", "truncated")
    magic, version, kind_code, count = _SHARD_HEADER.unpack_from(data)
    if magic != SHARD_MAGIC:
        raise BundleError(field, "is not a bundle shard (wrong magic bytes)", "not_a_shard")
    if version != FORMAT_VERSION:
        raise BundleError(field, f"shard format version {version} is not supported", "not_a_shard")
    if kind_code != SHARD_KINDS[kind]:
        found = next((name for name, code in SHARD_KINDS.items() if code == kind_code), f"kind {kind_code}")
        raise BundleError(field, f"holds {found} but {kind} were expected", "not_a_shard")
    if not 1 <= count <= MAX_SAMPLES_PER_SHARD:
        raise BundleError(field, f"announces {count} samples, outside 1..{MAX_SAMPLES_PER_SHARD}", "too_large")
    if expected_samples is not None and count != expected_samples:
        raise BundleError(field, f"holds {count} samples, the manifest says {expected_samples}", "sample_count")
    body = _SHARD_HEADER.size + count * _LENGTH.size
    if len(data) < body:
        raise BundleError(field, f"is truncated inside its length table ({len(data)} of {body} bytes)", "truncated")
    lengths = [_LENGTH.unpack_from(data, _SHARD_HEADER.size + i * _LENGTH.size)[0] for i in range(count)]
    for position, length in enumerate(lengths):
        if not 1 <= length <= MAX_CIPHERTEXT_BYTES:
            raise BundleError(f"{field}.samples[{position}]", f"length {length} is outside 1..{MAX_CIPHERTEXT_BYTES}")
    announced = body + sum(lengths)
    if len(data) < announced:
        raise BundleError(field, f"is truncated: {len(data)} bytes, its header announces {announced}", "truncated")
    if len(data) > announced:
        raise BundleError(field, f"has {len(data) - announced} bytes after its last sample", "trailing_bytes")
    items = []
    offset = body
    for length in lengths:
        items.append(data[offset : offset + length])
        offset += length
    return items


def check_object(data: bytes, *, size: int, sha256: str, field: str) -> None:
    """The bytes fetched for ``field`` are exactly those the manifest recorded."""
    if len(data) != size:
        code = "truncated" if len(data) < size else "size_mismatch"
        raise BundleError(field, f"is {len(data)} bytes, the manifest says {size}", code)
    if sha256_hex(data) != sha256:
        raise BundleError(field, "does not match the sha256 in the manifest", "checksum")


# ---------------------------------------------------------------------------------------------------------
# Checks against the serving side


def check_model(manifest: Manifest, package_arn: str) -> None:
    if manifest.model.package_arn != package_arn:
        raise BundleError(
            "model.package_arn",
            f"the bundle is for {manifest.model.package_arn}, this endpoint serves {package_arn}",
            "model_mismatch",
        )


def check_versions(manifest: Manifest, serving: VersionsRecord) -> None:
    """The bundle's releases against the endpoint's, by the rule of ``VersionsRecord.mismatches``."""
    for name, theirs, ours in serving.mismatches(VersionsRecord.from_dict(manifest.versions)):
        raise BundleError(
            f"versions.{name}",
            f"the bundle was made with {LABELS[name]} {theirs}, the endpoint runs {ours}",
            "version_mismatch",
        )


# ---------------------------------------------------------------------------------------------------------
# The request the workflow sends to the endpoint for one shard


@dataclass(frozen=True)
class ShardRequest:
    manifest_uri: str
    shard_index: int
    result_uri: str

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "fhe_request": SHARD_REQUEST,
                "format_version": FORMAT_VERSION,
                "manifest_uri": self.manifest_uri,
                "shard_index": self.shard_index,
                "result_uri": self.result_uri,
            },
            sort_keys=True,
        ).encode()


def parse_shard_request(data: bytes | str | Mapping[str, Any]) -> ShardRequest:
    fields = _Fields(
        _load_json(data, "request", 64 * 1024),
        "",
        ("fhe_request", "format_version", "manifest_uri", "shard_index", "result_uri"),
    )
    if fields.get("fhe_request") != SHARD_REQUEST:
        raise BundleError("fhe_request", f"must be {SHARD_REQUEST!r}")
    if fields.integer("format_version", 1, 1_000_000) != FORMAT_VERSION:
        raise BundleError("format_version", f"only version {FORMAT_VERSION} is supported")
    return ShardRequest(
        manifest_uri=check_s3_uri(fields.string("manifest_uri", max_length=1100), "manifest_uri"),
        shard_index=fields.integer("shard_index", 0, MAX_SHARDS - 1),
        result_uri=check_s3_uri(fields.string("result_uri", max_length=1100), "result_uri"),
    )


@dataclass(frozen=True)
class ShardResult:
    """What the endpoint answers for a shard request: where the result shard is, and its checks."""

    bundle_id: str
    shard_index: int
    result_uri: str
    samples: int
    sha256: str
    size: int

    def to_json(self) -> bytes:
        return json.dumps(self.__dict__, sort_keys=True).encode()


def parse_shard_result(data: bytes | str | Mapping[str, Any]) -> ShardResult:
    fields = _Fields(
        _load_json(data, "shard_result", 64 * 1024),
        "",
        ("bundle_id", "shard_index", "result_uri", "samples", "sha256", "size"),
    )
    return ShardResult(
        bundle_id=fields.string("bundle_id", _BUNDLE_ID, 64),
        shard_index=fields.integer("shard_index", 0, MAX_SHARDS - 1),
        result_uri=check_s3_uri(fields.string("result_uri", max_length=1100), "result_uri"),
        samples=fields.integer("samples", 1, MAX_SAMPLES_PER_SHARD),
        sha256=fields.string("sha256", _SHA256, 64),
        size=fields.integer("size", 1, MAX_SHARD_BYTES),
    )
