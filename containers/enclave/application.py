"""What the enclave does with one shard, bytes in and bytes out: the bundle's data key released by KMS to this
enclave (``key_release``), the records opened under it, the model run, the predictions sealed to the owner's key.

Every refusal names its reason (``ShardRefused.reason``), and none carries a record, a prediction or a key:
``attestation_refused`` (KMS would not release the key to this enclave's measurement), ``key_refused`` (the key is
not this owner's and bundle's, or KMS's answer is not one it gives a ``Recipient``), ``tampered`` (records that do
not open under the key and binding), ``invalid_records`` (not an array of the model's features, or not a list of
prompts), ``empty_prompt`` and ``prompt_too_long`` (a text bundle's prompt, named by its index), ``wrong_records``
(texts for a model of numbers, or the other way round)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from botocore.exceptions import ClientError

from common.bundle.binding import ShardBinding
from common.bundle.enclave_crypto import (
    decrypt_records,
    records_from_bytes,
    records_to_bytes,
    seal_results,
    texts_from_bytes,
    texts_to_bytes,
)
from common.bundle.generation import GenerationSettings, check_prompts
from common.bundle.schema import MAX_SAMPLES_PER_SHARD, BundleError
from containers.enclave.key_release import KeyRelease, KeyReleaseRefused
from containers.enclave.language_model import PromptRefused
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
    # A text bundle's generation settings (its binding carries their digest, so they are the owner's or nothing
    # opens); None for records of numbers.
    generation: GenerationSettings | None = None


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
        except BundleError as error:
            raise ShardRefused("tampered", str(error)) from error
        if self.model.language is not None:
            return self._complete(work, plaintext, released.attestation_document)
        if work.generation is not None:
            raise ShardRefused("wrong_records", "a text bundle for a model that takes records of numbers")
        try:
            records = records_from_bytes(
                plaintext, f"shards[{work.binding.shard}]", max_values=MAX_SAMPLES_PER_SHARD * MAX_FEATURES
            )
        except BundleError as error:
            raise ShardRefused("invalid_records", str(error)) from error
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

    def _complete(self, work: ShardWork, plaintext: bytes, attestation_document: bytes) -> ShardAnswer:
        """A text bundle's shard: its prompts completed by the language model with the owner's settings, the
        completions sealed to the owner. Refusals name the prompt's index, never its text."""
        assert self.model.language is not None
        if work.generation is None:
            raise ShardRefused("wrong_records", "records of numbers for a language model: it completes texts")
        field = f"shards[{work.binding.shard}]"
        try:
            prompts = check_prompts(texts_from_bytes(plaintext, field), field)
        except BundleError as error:
            raise ShardRefused(error.code, f"{error.field}: {error.problem}") from error
        try:
            completions = self.model.language.complete(prompts, work.generation)
        except PromptRefused as refused:
            raise ShardRefused(refused.reason, f"{field}[{refused.index}]: {refused.detail}") from refused
        try:
            sealed = seal_results(work.owner_public_key, texts_to_bytes(completions), work.binding)
        except BundleError as error:
            raise ShardRefused("invalid_owner_key", str(error)) from error
        return ShardAnswer(sealed, len(prompts), attestation_document)
