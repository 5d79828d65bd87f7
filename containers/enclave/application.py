"""What the enclave does with one shard, bytes in and bytes out: the bundle's data key released by KMS to this
enclave (``key_release``), the records opened under it, the model run, the predictions sealed to the owner's key.

Every refusal names its reason (``ShardRefused.reason``), and none carries a record, a prediction or a key:
``attestation_refused`` (KMS would not release the key to this enclave's measurement), ``key_refused`` (the key is
not this owner's and bundle's, or KMS's answer is not one it gives a ``Recipient``), ``tampered`` (records that do
not open under the key and binding), ``invalid_records`` (not an array of the model's features)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from botocore.exceptions import ClientError

from common.bundle.enclave_crypto import (
    ShardBinding,
    decrypt_records,
    records_from_bytes,
    records_to_bytes,
    seal_results,
)
from common.bundle.schema import MAX_SAMPLES_PER_SHARD, BundleError
from containers.enclave.key_release import KeyRelease, KeyReleaseRefused
from containers.enclave.models import EnclaveModel
from containers.enclave.nsm import NsmError

MAX_FEATURES = 100_000


class ShardRefused(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class ShardWork:
    binding: ShardBinding  # the owner from where the bundle lies, never from the manifest alone
    encrypted_data_key: bytes
    encrypted_records: bytes
    owner_public_key: bytes


@dataclass(frozen=True)
class ShardAnswer:
    sealed_results: bytes
    samples: int
    attestation_document: bytes  # the measurement and model digest that served the shard, for the audit


class EnclaveApplication:
    def __init__(self, model: EnclaveModel, key_release: KeyRelease) -> None:
        self.model = model
        self.key_release = key_release

    def _pcr0(self) -> str:
        """This enclave's image measurement as its NSM reports it (what KMS compared with the key policy)."""
        try:
            return self.key_release.nsm.describe_pcr(0).hex()
        except NsmError as error:
            return f"(unknown: {error})"

    def run(self, work: ShardWork) -> ShardAnswer:
        try:
            released = self.key_release.data_key(
                work.encrypted_data_key,
                encryption_context=work.binding.encryption_context(),
                model_digest=bytes.fromhex(self.model.digest),
                nonce=work.binding.attestation_nonce(),
            )
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            if code == "AccessDeniedException":
                raise ShardRefused(
                    "attestation_refused", f"KMS refused the bundle's data key to enclave measurement {self._pcr0()}"
                ) from error
            raise ShardRefused("key_refused", f"KMS refused the data key ({code})") from error
        except KeyReleaseRefused as error:
            raise ShardRefused("key_refused", str(error)) from error
        try:
            plaintext = decrypt_records(released.data_key, work.encrypted_records, work.binding)
            records = records_from_bytes(
                plaintext, f"shards[{work.binding.shard}]", max_values=MAX_SAMPLES_PER_SHARD * MAX_FEATURES
            )
        except BundleError as error:
            reason = "tampered" if error.code == "tampered" else "invalid_records"
            raise ShardRefused(reason, str(error)) from error
        records = records.reshape(1, -1) if records.ndim == 1 else records
        if records.shape[1] != self.model.features or not 0 < records.shape[0] <= MAX_SAMPLES_PER_SHARD:
            raise ShardRefused(
                "invalid_records",
                f"a shard holds 1 to {MAX_SAMPLES_PER_SHARD} records of {self.model.features} features, "
                f"not {records.shape[0]} of {records.shape[1]}",
            )
        predictions = np.asarray(self.model.predict(records))
        try:
            sealed = seal_results(work.owner_public_key, records_to_bytes(predictions), work.binding)
        except BundleError as error:
            raise ShardRefused("invalid_owner_key", str(error)) from error
        return ShardAnswer(sealed, int(records.shape[0]), released.attestation_document)
