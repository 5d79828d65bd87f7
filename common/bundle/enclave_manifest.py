"""The manifest of an enclave bundle: the same format, layout and limits as an FHE bundle's (``manifest``), with an
``enclave`` section in place of the evaluation key.

    "enclave": {
        "key_arn": the deployment's enclave KMS key the data key was made under,
        "data_key": the bundle's data key as KMS encrypted it (base64 ``CiphertextBlob``), under the encryption context
                    {"owner": <owner>, "bundle": <bundle id>},
        "owner_public_key": the owner's X25519 public key (base64, 32 bytes) the results are sealed to
    }

Each shard object is one AES-256-GCM ciphertext of its records (``enclave_crypto``) for a request, the HPKE-sealed
predictions for a result. Neither path reads the other's bundles: ``parse_manifest`` refuses one with an ``enclave``
section, and this parser one with an evaluation key.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from common.bundle.binding import ShardBinding
from common.bundle.generation import GenerationSettings
from common.bundle.manifest import (
    HEADER_FIELDS,
    Manifest,
    ManifestHeader,
    ModelRef,
    ShardEntry,
    parse_manifest,
    read_header,
)
from common.bundle.schema import (
    MAX_MANIFEST_BYTES,
    NONCE_BYTES,
    OWNER_KEY_BYTES,
    SHARD_FOLDER,
    BundleError,
    Fields,
    load_json,
    sha256_hex,
    utc_now,
)

BundlePath = Literal["fhe", "enclave"]

# KMS's ciphertext blob of a 32-byte data key is under 300 bytes; 6144 is the most KMS accepts as a CiphertextBlob.
MAX_DATA_KEY_BYTES = 6144
_GCM_TAG_BYTES = 16
_KEY_ARN = re.compile(r"^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/[A-Za-z0-9-]{1,64}$")
_FIELDS = (*HEADER_FIELDS, "enclave", "generation")


def records_key(index: int) -> str:
    """The object key of shard ``index``'s encrypted records, relative to the bundle's prefix."""
    return f"{SHARD_FOLDER}/{index:05d}.records"


def sealed_results_key(index: int) -> str:
    """The object key of shard ``index``'s sealed predictions, relative to the result bundle's prefix."""
    return f"{SHARD_FOLDER}/{index:05d}.sealed"


def attestation_key(index: int) -> str:
    """The object key, relative to the result bundle's prefix, of the attestation document the enclave presented
    for shard ``index``'s data key: the proof of what served it (its measurement, the model's digest), for the
    audit and the owner."""
    return f"{SHARD_FOLDER}/{index:05d}.attestation"


def _min_object_bytes(samples: int) -> int:
    # The smaller of one AES-GCM ciphertext (nonce, tag) of its records (a short text shard's JSON is a few bytes)
    # and one HPKE seal (a 32-byte encapsulated key, tag) of its results.
    return min(NONCE_BYTES, 32) + _GCM_TAG_BYTES + 1


@dataclass(frozen=True)
class EnclaveKeys:
    key_arn: str
    data_key: bytes  # KMS's CiphertextBlob: opens only in the measured enclave, under the owner's and bundle's context
    owner_public_key: bytes  # raw X25519

    def to_dict(self) -> dict[str, str]:
        return {
            "key_arn": self.key_arn,
            "data_key": base64.b64encode(self.data_key).decode(),
            "owner_public_key": base64.b64encode(self.owner_public_key).decode(),
        }


@dataclass(frozen=True)
class EnclaveManifest:
    header: ManifestHeader
    enclave: EnclaveKeys
    # A text bundle's (prompts for a language model): how they are completed. None for records of numbers.
    generation: GenerationSettings | None = None

    @property
    def kind(self) -> str:
        return self.header.kind

    @property
    def bundle_id(self) -> str:
        return self.header.bundle_id

    @property
    def model(self) -> ModelRef:
        return self.header.model

    @property
    def shards(self) -> tuple[ShardEntry, ...]:
        return self.header.shards

    @property
    def versions(self) -> Mapping[str, str]:
        return self.header.versions

    @property
    def total_samples(self) -> int:
        return sum(shard.samples for shard in self.header.shards)

    def to_dict(self) -> dict[str, Any]:
        generation = {"generation": self.generation.to_dict()} if self.generation is not None else {}
        return {**self.header.to_dict(), "enclave": self.enclave.to_dict(), **generation}

    def binding(self, owner: str, shard: int) -> ShardBinding:
        """What shard ``shard`` of this bundle, dropped by ``owner``, is bound to (its generation settings too)."""
        settings = self.generation.digest() if self.generation is not None else ""
        return ShardBinding(owner, self.bundle_id, shard, settings)

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True).encode()


def _base64(fields: Fields, name: str, max_bytes: int) -> bytes:
    text = fields.string(name, max_length=4 * (max_bytes // 3 + 1))
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as error:
        raise BundleError(fields.name(name), "is not base64") from error


def bundle_path(data: bytes | str | Mapping[str, Any]) -> BundlePath:
    """Which path a manifest's bundle is for: ``enclave`` when it has an ``enclave`` section. Which path actually
    serves it is the registered model's kind; a manifest that names the other path is refused by that path's parser."""
    return "enclave" if "enclave" in load_json(data, "manifest", MAX_MANIFEST_BYTES) else "fhe"


def parse_enclave_manifest(data: bytes | str | Mapping[str, Any]) -> EnclaveManifest:
    """Validate an enclave bundle's manifest and return it typed."""
    loaded = load_json(data, "manifest", MAX_MANIFEST_BYTES)
    if "evaluation_key" in loaded:
        raise BundleError("evaluation_key", "names an FHE bundle, which the enclave path does not serve", "wrong_path")
    top, header = read_header(loaded, _FIELDS, _min_object_bytes)
    fields = Fields(top.get("enclave"), "enclave", ("key_arn", "data_key", "owner_public_key"))
    key_arn = fields.string("key_arn", _KEY_ARN, 256)
    data_key = _base64(fields, "data_key", MAX_DATA_KEY_BYTES)
    if not 1 <= len(data_key) <= MAX_DATA_KEY_BYTES:
        raise BundleError("enclave.data_key", f"must be 1 to {MAX_DATA_KEY_BYTES} bytes, not {len(data_key)}")
    owner_key = _base64(fields, "owner_public_key", OWNER_KEY_BYTES)
    if len(owner_key) != OWNER_KEY_BYTES:
        raise BundleError("enclave.owner_public_key", f"must be a {OWNER_KEY_BYTES}-byte X25519 public key")
    generation = GenerationSettings.from_dict(loaded["generation"]) if "generation" in loaded else None
    return EnclaveManifest(header, EnclaveKeys(key_arn, data_key, owner_key), generation)


def parse_either_manifest(data: bytes | str | Mapping[str, Any]) -> Manifest | EnclaveManifest:
    """A manifest of either path, parsed by its own path's parser (``bundle_path``): for readers of both, such as
    the audit and its recorder."""
    return parse_enclave_manifest(data) if bundle_path(data) == "enclave" else parse_manifest(data)


def sealed_entries(request: EnclaveManifest, sealed: Mapping[int, bytes]) -> tuple[ShardEntry, ...]:
    """The result shards of ``sealed`` objects (by shard index), one per request shard, same samples."""
    entries = []
    for shard in request.shards:
        if shard.index not in sealed:
            raise BundleError(f"shards[{shard.index}]", "has no sealed result", "missing_shard")
        data, key = sealed[shard.index], sealed_results_key(shard.index)
        entries.append(ShardEntry(shard.index, key, shard.samples, sha256_hex(data), len(data)))
    return tuple(entries)


def result_manifest(request: EnclaveManifest, request_sha256: str, shards: tuple[ShardEntry, ...]) -> EnclaveManifest:
    """The result bundle's manifest answering ``request`` with its result ``shards`` (the sealed predictions)."""
    header = request.header
    answered = ManifestHeader(
        "result", header.bundle_id, utc_now(), header.model, dict(header.versions), shards, request_sha256
    )
    return EnclaveManifest(answered, request.enclave, request.generation)
