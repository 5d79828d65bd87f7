"""The batch owner's side of the enclave path, bytes in and bytes out: rows → an enclave request bundle on disk, and
a result bundle → predictions. Nothing here reads a prediction or a record anywhere but on the owner's machine.

- The bundle's data key comes from KMS ``GenerateDataKey`` on the deployment's enclave key, under the encryption
  context ``{"owner", "bundle"}`` (the key policy lets an owner's role make keys only for its own owner name, never
  decrypt); its plaintext is used for the shards and dropped, only KMS's encrypted form goes in the manifest.
- The owner's X25519 key pair lives in the client home (``owner_key``, owner-only); its public half goes in the
  manifest, and the enclave seals the predictions to it.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import x25519
from tqdm import tqdm

from client.errors import FheClientError, InputError
from common.bundle.binding import ShardBinding
from common.bundle.enclave_crypto import (
    DATA_KEY_BYTES,
    encrypt_records,
    open_results,
    records_from_bytes,
    records_to_bytes,
    texts_from_bytes,
    texts_to_bytes,
)
from common.bundle.enclave_manifest import (
    EnclaveKeys,
    EnclaveManifest,
    parse_enclave_manifest,
    records_key,
)
from common.bundle.generation import MAX_PROMPTS_PER_SHARD, GenerationSettings, check_prompts
from common.bundle.manifest import ManifestHeader, ModelRef, ShardEntry
from common.bundle.schema import MANIFEST_NAME, MAX_SAMPLES_PER_SHARD, BundleError, check_owner, sha256_hex, utc_now
from common.bundle.shards import check_object

OWNER_KEY = "owner_x25519.key"  # in the client home: the private key the results are sealed to (raw, 0600)


def owner_key(home: Path) -> x25519.X25519PrivateKey:
    """The owner's X25519 key pair, made on first use: the private half never leaves this file."""
    path = home / OWNER_KEY
    if path.exists():
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise FheClientError(f"{path} is readable by others (mode {mode:o}); it must be the owner's only (0600)")
        raw = path.read_bytes()
        if len(raw) != 32:
            raise FheClientError(f"{path} is not an X25519 private key (32 bytes)")
        return x25519.X25519PrivateKey.from_private_bytes(raw)
    home.mkdir(parents=True, exist_ok=True)
    key = x25519.X25519PrivateKey.generate()
    raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(raw)
    return key


def public_bytes(key: x25519.X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def make_data_key(kms: Any, key_arn: str, binding: ShardBinding) -> tuple[bytes, bytes]:
    """(plaintext, KMS's encrypted form) of a new data key bound to the binding's owner and bundle."""
    made = kms.generate_data_key(KeyId=key_arn, KeySpec="AES_256", EncryptionContext=binding.encryption_context())
    plaintext, encrypted = bytes(made["Plaintext"]), bytes(made["CiphertextBlob"])
    if len(plaintext) != DATA_KEY_BYTES:
        raise FheClientError(f"KMS answered a {len(plaintext)}-byte data key, not {DATA_KEY_BYTES}")
    return plaintext, encrypted


def _write_bundle(
    kms: Any,
    *,
    key_arn: str,
    owner: str,
    model: ModelRef,
    versions: Mapping[str, str],
    chunks: Sequence[tuple[bytes, int]],
    owner_public_key: bytes,
    destination: Path,
    bundle_id: str,
    generation: GenerationSettings | None,
    progress: bool,
) -> EnclaveManifest:
    """The shards' plaintexts (each with its sample count) encrypted under a new data key, and the manifest."""
    check_owner(owner)
    destination.mkdir(parents=True, exist_ok=True)
    if (destination / MANIFEST_NAME).exists():
        raise InputError(f"{destination} already holds a bundle; choose an empty folder")
    header = ManifestHeader("request", bundle_id, utc_now(), model, dict(versions), (), None)
    binding_of = EnclaveManifest(header, EnclaveKeys(key_arn, b"", owner_public_key), generation).binding
    data_key, encrypted_key = make_data_key(kms, key_arn, binding_of(owner, 0))
    entries = []
    with tqdm(total=sum(n for _, n in chunks), unit="row", desc="encrypt", disable=not progress) as bar:
        for index, (plaintext, samples) in enumerate(chunks):
            data = encrypt_records(data_key, plaintext, binding_of(owner, index))
            key = records_key(index)
            (destination / key).parent.mkdir(parents=True, exist_ok=True)
            (destination / key).write_bytes(data)
            entries.append(ShardEntry(index, key, samples, sha256_hex(data), len(data)))
            bar.update(samples)
    del data_key  # only KMS's encrypted form is kept
    header = ManifestHeader("request", bundle_id, utc_now(), model, dict(versions), tuple(entries), None)
    manifest = EnclaveManifest(header, EnclaveKeys(key_arn, encrypted_key, owner_public_key), generation)
    (destination / MANIFEST_NAME).write_bytes(manifest.to_json())
    return manifest


def encrypt_enclave_bundle(
    kms: Any,
    *,
    key_arn: str,
    owner: str,
    model: ModelRef,
    versions: Mapping[str, str],
    rows: npt.NDArray[np.float64],
    owner_public_key: bytes,
    destination: Path,
    bundle_id: str,
    shard_size: int = 100,
    progress: bool = True,
) -> EnclaveManifest:
    """Rows (already prepared as the model takes them) → an enclave request bundle in ``destination``."""
    if not 1 <= shard_size <= MAX_SAMPLES_PER_SHARD:
        raise InputError(f"the shard size must be between 1 and {MAX_SAMPLES_PER_SHARD}, not {shard_size}")
    if rows.ndim != 2 or len(rows) == 0:
        raise InputError(f"the rows must be a non-empty 2-D array, not of shape {rows.shape}")
    chunks = [(records_to_bytes(rows[i : i + shard_size]), len(rows[i : i + shard_size]))
              for i in range(0, len(rows), shard_size)]  # fmt: skip
    return _write_bundle(
        kms, key_arn=key_arn, owner=owner, model=model, versions=versions, chunks=chunks,
        owner_public_key=owner_public_key, destination=destination, bundle_id=bundle_id, generation=None,
        progress=progress,
    )  # fmt: skip


def encrypt_enclave_texts(
    kms: Any,
    *,
    key_arn: str,
    owner: str,
    model: ModelRef,
    versions: Mapping[str, str],
    prompts: Sequence[str],
    generation: GenerationSettings,
    owner_public_key: bytes,
    destination: Path,
    bundle_id: str,
    shard_size: int = 20,
    progress: bool = True,
) -> EnclaveManifest:
    """Prompts for a language model → a text bundle in ``destination``: the prompts in shards (a JSON array each)
    bound to the generation settings, which the manifest carries."""
    if not 1 <= shard_size <= MAX_PROMPTS_PER_SHARD:
        raise InputError(f"a text bundle's shard holds 1 to {MAX_PROMPTS_PER_SHARD} prompts, not {shard_size}")
    if not prompts:
        raise InputError("a text bundle needs at least one prompt")
    chunks = [(texts_to_bytes(check_prompts(list(prompts[i : i + shard_size]), f"prompts[{i}:]")),
               len(prompts[i : i + shard_size])) for i in range(0, len(prompts), shard_size)]  # fmt: skip
    return _write_bundle(
        kms, key_arn=key_arn, owner=owner, model=model, versions=versions, chunks=chunks,
        owner_public_key=owner_public_key, destination=destination, bundle_id=bundle_id, generation=generation,
        progress=progress,
    )  # fmt: skip


def _opened_shards(
    private_key: x25519.X25519PrivateKey,
    owner: str,
    request_manifest: bytes,
    result_manifest: bytes,
    shards: Mapping[int, bytes],
) -> Iterator[tuple[ShardEntry, bytes]]:
    """Each result shard opened, in order, once the result is this request's and sealed to this owner's key."""
    request = parse_enclave_manifest(request_manifest)
    result = parse_enclave_manifest(result_manifest)
    if result.kind != "result" or result.bundle_id != request.bundle_id:
        raise BundleError("manifest", f"is not the result of bundle {request.bundle_id}", "not_this_bundle")
    if result.header.request_manifest_sha256 != sha256_hex(request_manifest):
        raise BundleError("request.manifest_sha256", "is not this request's manifest", "not_this_bundle")
    if result.enclave.owner_public_key != public_bytes(private_key):
        raise FheClientError("the result is sealed to another owner's key: it cannot be opened with this one")
    if result.generation != request.generation:
        raise BundleError("generation", "the result was made with other settings than the request's", "not_this_bundle")
    for entry in result.shards:
        field = f"shards[{entry.index}]"
        if entry.index not in shards:
            raise BundleError(field, "is missing from the result", "missing_shard")
        check_object(shards[entry.index], size=entry.size, sha256=entry.sha256, field=field)
        yield entry, open_results(private_key, shards[entry.index], request.binding(owner, entry.index))


def open_enclave_result(
    private_key: x25519.X25519PrivateKey,
    owner: str,
    request_manifest: bytes,
    result_manifest: bytes,
    shards: Mapping[int, bytes],
) -> npt.NDArray[np.float64]:
    """The predictions of a result bundle, one per input row in input order; only the owner's key opens them, and
    only for this owner's bundle."""
    predictions = []
    for entry, opened in _opened_shards(private_key, owner, request_manifest, result_manifest, shards):
        field = f"shards[{entry.index}]"
        values = records_from_bytes(opened, field, max_values=MAX_SAMPLES_PER_SHARD * 1000)
        if len(values) != entry.samples:
            raise BundleError(field, f"holds {len(values)} predictions, the manifest says {entry.samples}")
        predictions.append(values)
    return np.concatenate(predictions, axis=0)


def open_enclave_texts(
    private_key: x25519.X25519PrivateKey,
    owner: str,
    request_manifest: bytes,
    result_manifest: bytes,
    shards: Mapping[int, bytes],
) -> list[str]:
    """A text bundle's completions, one per prompt in input order, opened as :func:`open_enclave_result` opens
    predictions."""
    completions: list[str] = []
    for entry, opened in _opened_shards(private_key, owner, request_manifest, result_manifest, shards):
        field = f"shards[{entry.index}]"
        texts = texts_from_bytes(opened, field)
        if len(texts) != entry.samples or not all(isinstance(text, str) for text in texts):
            raise BundleError(field, f"holds no {entry.samples} completions", "invalid_records")
        completions.extend(texts)
    return completions


def class_probabilities(predictions: npt.NDArray[np.float64], classes: int) -> npt.NDArray[np.float64]:
    """The enclave model's predictions as one probability per class and row: a binary model's single column (the
    second class's probability, as XGBoost's ``binary:logistic`` answers) is spread over both classes."""
    if predictions.ndim == 1 and classes == 2:
        positive = np.clip(predictions, 0.0, 1.0)
        return np.stack([1.0 - positive, positive], axis=1)
    if predictions.ndim == 2 and predictions.shape[1] == classes:
        return predictions
    raise FheClientError(f"the enclave's predictions have shape {predictions.shape}; the model has {classes} classes")
