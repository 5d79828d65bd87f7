"""The shard container: magic, format version, kind, sample count, one length per sample, the samples back to
back. Parsing refuses anything that is not exactly what its header announces."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Literal

from common.bundle.schema import (
    FORMAT_VERSION,
    MAX_CIPHERTEXT_BYTES,
    MAX_SAMPLES_PER_SHARD,
    MAX_SHARD_BYTES,
    BundleError,
    sha256_hex,
)

SHARD_MAGIC = b"FHEBSHRD"
_SHARD_HEADER = struct.Struct("<8sHHI")
_LENGTH = struct.Struct("<Q")
SHARD_KINDS = {"ciphertexts": 1, "results": 2}

ShardKind = Literal["ciphertexts", "results"]


def min_shard_bytes(samples: int) -> int:
    """The smallest shard that can hold ``samples`` samples (each at least one byte)."""
    return _SHARD_HEADER.size + samples * (_LENGTH.size + 1)


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
