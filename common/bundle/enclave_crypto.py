"""The enclave path's cryptography of a bundle, shared by the batch owner's client and the enclave: records under a
KMS data key, results sealed to the owner's public key. Bytes in, bytes out; nothing here calls AWS.

- **Records**: each shard's records (an ``.npy`` float array, read without pickle) under AES-256-GCM with the
  bundle's data key, a fresh 96-bit nonce first; the additional data binds the ciphertext to its owner, bundle and
  shard, so a shard moved to another bundle or owner does not open.
- **The data key**: made by KMS ``GenerateDataKey`` on the deployment's enclave key with the encryption context
  ``{"owner": <owner>, "bundle": <bundle id>}``; only its encrypted form (``CiphertextBlob``) leaves the owner's
  machine. KMS refuses ``Decrypt`` under any other context, so the enclave, which takes the owner from where the
  bundle lies, cannot open one owner's key for another owner's bundle.
- **Results**: sealed with HPKE (RFC 9180: X25519, HKDF-SHA256, AES-256-GCM; pyca/cryptography's) to the owner's
  X25519 public key named in the manifest, with the same binding as ``info``: only the owner's private key, kept on
  the owner's machine, opens them; the parent, the account and the enclave after the fact cannot.
"""

from __future__ import annotations

import io
import json
import secrets
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from common.bundle.binding import ShardBinding
from common.bundle.schema import NONCE_BYTES, OWNER_KEY_BYTES, BundleError

DATA_KEY_BYTES = 32
SEAL = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)


def records_to_bytes(records: npt.ArrayLike) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(records, dtype=np.float64), allow_pickle=False)
    return buffer.getvalue()


def records_from_bytes(data: bytes, field: str, *, max_values: int) -> npt.NDArray[np.float64]:
    """A 1- or 2-dimensional float array from ``.npy`` bytes, never unpickled, within ``max_values``."""
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise BundleError(field, "is not an .npy array of numbers") from error
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "fiu" or array.ndim not in (1, 2):
        raise BundleError(field, "must be a 1- or 2-dimensional array of numbers")
    if array.size > max_values:
        raise BundleError(field, f"holds {array.size} values, over the limit of {max_values}", "too_large")
    if not np.isfinite(array).all():
        raise BundleError(field, "holds a value that is not a finite number")
    return array.astype(np.float64, copy=False)


def texts_to_bytes(texts: Sequence[str]) -> bytes:
    """A text bundle's shard (its prompts) or result (its completions): a JSON array of texts, UTF-8."""
    return json.dumps(list(texts), ensure_ascii=False).encode()


def texts_from_bytes(data: bytes, field: str) -> list[Any]:
    """The JSON array of ``texts_to_bytes``; each item's type is the reader's to check."""
    try:
        texts = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise BundleError(field, "is not a JSON array of texts", "invalid_records") from None
    if not isinstance(texts, list):
        raise BundleError(field, "is not a JSON array of texts", "invalid_records")
    return texts


def encrypt_records(data_key: bytes, plaintext: bytes, binding: ShardBinding) -> bytes:
    nonce = secrets.token_bytes(NONCE_BYTES)
    return nonce + AESGCM(data_key).encrypt(nonce, plaintext, binding.associated_data("records"))


def decrypt_records(data_key: bytes, ciphertext: bytes, binding: ShardBinding) -> bytes:
    if len(data_key) != DATA_KEY_BYTES:
        raise BundleError("data_key", f"must be {DATA_KEY_BYTES} bytes")
    if len(ciphertext) <= NONCE_BYTES + 16:
        raise BundleError(f"shards[{binding.shard}]", "is too short to be encrypted records")
    try:
        return AESGCM(data_key).decrypt(
            ciphertext[:NONCE_BYTES], ciphertext[NONCE_BYTES:], binding.associated_data("records")
        )
    except InvalidTag as error:
        raise BundleError(
            f"shards[{binding.shard}]", "does not open under this bundle's data key and binding", "tampered"
        ) from error


def owner_public_key(raw: bytes) -> x25519.X25519PublicKey:
    if len(raw) != OWNER_KEY_BYTES:
        raise BundleError("owner_public_key", f"must be a {OWNER_KEY_BYTES}-byte X25519 public key")
    return x25519.X25519PublicKey.from_public_bytes(raw)


def seal_results(owner_key: bytes, plaintext: bytes, binding: ShardBinding) -> bytes:
    return SEAL.encrypt(plaintext, owner_public_key(owner_key), info=binding.associated_data("results"))


def open_results(private_key: x25519.X25519PrivateKey, sealed: bytes, binding: ShardBinding) -> bytes:
    try:
        return SEAL.decrypt(sealed, private_key, info=binding.associated_data("results"))
    except (InvalidTag, ValueError) as error:
        raise BundleError(f"results[{binding.shard}]", "does not open with this key and binding", "tampered") from error
