"""What an enclave bundle's shard is bound to: its owner (where the bundle lies), its bundle and its index, and a
text bundle's generation settings. The records' encryption, the results' seal and the enclave's attestation nonce
are each made under it (``enclave_crypto``), so a shard moved to another owner, bundle, index or settings does not
open. Standard library only: the workflow's functions read it too."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass


@dataclass(frozen=True)
class ShardBinding:
    """What a shard's ciphertext is bound to: a ciphertext opens only under the same binding."""

    owner: str
    bundle_id: str
    shard: int
    # A text bundle's generation settings (GenerationSettings.digest): the prompts open, and the completions are
    # sealed, only under the settings the owner chose. Empty for records of numbers.
    settings: str = ""

    def encryption_context(self) -> dict[str, str]:
        """The data key's KMS encryption context (the bundle's, not the shard's: one data key per bundle)."""
        return {"owner": self.owner, "bundle": self.bundle_id}

    def attestation_nonce(self) -> bytes:
        """The nonce the enclave puts in the attestation document it presents for this shard's key: the shard,
        hashed (a document names no owner), so the document kept as the proof of what served the shard cannot be
        shown for another one."""
        return hashlib.sha256(self.associated_data("attestation")).digest()

    def associated_data(self, purpose: str) -> bytes:
        bound: dict[str, str | int] = {"purpose": purpose, "owner": self.owner, "bundle": self.bundle_id,
                                       "shard": self.shard}  # fmt: skip
        if self.settings:
            bound["settings"] = self.settings
        return json.dumps(bound, sort_keys=True, separators=(",", ":")).encode()
