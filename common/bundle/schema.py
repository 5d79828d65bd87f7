"""The bundle format's names and limits, its error, and the JSON reader that names every field it refuses."""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any

from common.s3uri import S3Uri, S3UriError

FORMAT = "fhe-batch-bundle"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
SHARD_FOLDER = "shards"

# Limits: a manifest or shard beyond them is refused before any work or allocation.
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
MAX_SHARDS = 10_000
MAX_SAMPLES_PER_SHARD = 100_000
MAX_TOTAL_SAMPLES = 10_000_000
MAX_SHARD_BYTES = 1024**3  # SageMaker asynchronous inference's payload ceiling
MAX_CIPHERTEXT_BYTES = 64 * 1024**2
# An endpoint's evaluator holds a key it loads twice (the bytes read, concrete's copy), then decompressed (a seeded
# bootstrap key grows by its GLWE size): at 2 GiB, two evaluators loading such keys at once stay within a default
# instance's memory (README, "The inference endpoint"). The heaviest model benchmarked has a 0.5 GB key.
MAX_EVALUATION_KEY_BYTES = 2 * 1024**3
MAX_KEY_LENGTH = 512
MAX_URI_LENGTH = 1100
MAX_MESSAGE_BYTES = 64 * 1024  # a shard request or result
# The enclave path's sizes (enclave_crypto, enclave_manifest): an X25519 public key, raw; AES-GCM's nonce.
OWNER_KEY_BYTES = 32
NONCE_BYTES = 12

# "keys" names the folder of an owner's evaluation keys under inbox/<owner>/ (common/bundle/store.py), never a
# bundle.
BUNDLE_ID_PATTERN = r"(?!keys(?![A-Za-z0-9_-]))[A-Za-z0-9][A-Za-z0-9_-]{2,63}"
BUNDLE_ID = re.compile(rf"^{BUNDLE_ID_PATTERN}$")
# A batch owner: the first folder under inbox/, outbox/ and quarantine/, and the end of its role's name
# (<prefix>-owner-<owner>, at most 64 characters with a 21-character prefix).
OWNER_PATTERN = r"[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?"
OWNER = re.compile(rf"^{OWNER_PATTERN}$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")
_KEY_CHARS = re.compile(r"^[A-Za-z0-9._/-]+$")


class BundleError(ValueError):
    """A manifest, shard or shard request that breaks the format; ``field`` names where, ``code`` classifies."""

    def __init__(self, field: str, problem: str, code: str = "invalid") -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem
        self.code = code

    def to_dict(self) -> dict[str, str]:
        return {"field": self.field, "code": self.code, "message": str(self)}


def check_owner(owner: str) -> str:
    """``owner`` if it is a batch owner's name; else a BundleError that says what one is."""
    if not OWNER.match(owner):
        raise BundleError(
            "owner", f"{owner!r}: a batch owner is 1 to 32 lowercase letters, digits or inner hyphens", "invalid_owner"
        )
    return owner


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate field {key!r}")
        result[key] = value
    return result


def load_json(data: bytes | str | Mapping[str, Any], what: str, limit: int) -> dict[str, Any]:
    """One JSON object of at most ``limit`` bytes: no duplicate fields, no NaN or Infinity."""
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


class Fields:
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

    def number(self, field: str, minimum: float, maximum: float) -> float:
        """A finite JSON number (an integer or a fraction) within [minimum, maximum]."""
        value = self.get(field)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise BundleError(self.name(field), f"must be a finite number, not {type(value).__name__}")
        if value < minimum:
            raise BundleError(self.name(field), f"must be at least {minimum:g}, got {value:g}")
        if value > maximum:
            raise BundleError(self.name(field), f"must be at most {maximum:g}, got {value:g}", "too_large")
        return float(value)

    def s3_uri(self, field: str) -> str:
        return check_s3_uri(self.string(field, max_length=MAX_URI_LENGTH), self.name(field))


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
    """An ``s3://bucket/key`` URI (``S3Uri``'s rule) whose key is plain: letters, digits, ``. _ - /``, no empty,
    ``.`` or ``..`` segment."""
    try:
        key = S3Uri.parse(value).key
    except S3UriError:
        key = ""
    if not key or len(key) > 1024 or not _KEY_CHARS.match(key):
        raise BundleError(field, f"{value[:80]!r} is not an s3://bucket/key URI")
    if any(part in ("..", ".", "") for part in key.split("/")):
        raise BundleError(field, f"{value[:80]!r} has an empty, '.' or '..' segment", "escapes_prefix")
    return value
