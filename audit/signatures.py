"""The audit log's signatures, verified offline: the public half of the recorder's KMS key (GetPublicKey) and
ECDSA-SHA256 over each record's signed message (common/audit_log.py), checked here with ``cryptography``, so the
auditor needs no permission to sign or to ask KMS to verify."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_public_key

from common.audit_log import SIGNING_ALGORITHM, SIGNING_KEY_SPEC, AuditRecord

SIGN_VERIFY = "SIGN_VERIFY"


class SigningKeyError(RuntimeError):
    """The deployment's audit signing key is not the kind the recorder signs with."""


@dataclass(frozen=True)
class SigningKey:
    """The recorder's signing key as the auditor knows it: its ARN and its public key."""

    arn: str  # as the deployment names it
    public_key: ec.EllipticCurvePublicKey

    @classmethod
    def from_kms(cls, kms: Any, key_id: str) -> SigningKey:
        answer = kms.get_public_key(KeyId=key_id)
        # KeySpec, or its older name, which some backends still answer with alone.
        spec, usage = answer.get("KeySpec") or answer.get("CustomerMasterKeySpec"), answer.get("KeyUsage")
        if (
            spec != SIGNING_KEY_SPEC
            or usage != SIGN_VERIFY
            or SIGNING_ALGORITHM not in answer.get("SigningAlgorithms", [])
        ):
            raise SigningKeyError(
                f"the audit signing key {key_id} is {spec}/{usage}, not {SIGNING_KEY_SPEC}/{SIGN_VERIFY} with "
                f"{SIGNING_ALGORITHM}"
            )
        key = load_der_public_key(answer["PublicKey"])
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise SigningKeyError(f"the public key of {key_id} is not an elliptic-curve key")
        return cls(key_id, key)

    def verifies(self, record: AuditRecord) -> bool:
        """Whether ``record`` carries this key's signature of its own signed message."""
        if record.signature is None:
            return False
        try:
            signature = base64.b64decode(record.signature, validate=True)
            self.public_key.verify(signature, record.signed_message, ec.ECDSA(hashes.SHA256()))
        except (binascii.Error, ValueError, InvalidSignature):
            return False
        return True


def signature_problems(records: Iterable[AuditRecord], key: SigningKey) -> tuple[list[str], list[str]]:
    """(failures, notes) of the chain's signatures, oldest record first.

    Every record from the first signed one on must carry the key's valid signature. Records before it were written
    before the log was signed: the first signed record's digest covers them (each digest covers the one before),
    so they are named in a note, not failed. A chain with records and no signature at all fails: nothing vouches
    for it. A rewritten record cannot carry a valid signature, and neither can any after it whose digest the
    rewrite changed: the first is named, the others counted.
    """
    ordered = sorted(records, key=lambda r: r.seq)
    failures: list[str] = []
    notes: list[str] = []
    first_signed = next((i for i, r in enumerate(ordered) if r.signature is not None), None)
    if first_signed is None:
        if ordered:
            failures.append(f"none of the {len(ordered)} records is signed: nothing vouches for the chain")
        return failures, notes
    if first_signed > 0:
        notes.append(
            f"records {ordered[0].seq}–{ordered[first_signed - 1].seq} predate signing; the signature of record "
            f"{ordered[first_signed].seq} covers them through its digest"
        )
    bad = [r for r in ordered[first_signed:] if not key.verifies(r)]
    if bad:
        first = bad[0]
        why = "is not signed" if first.signature is None else f"does not carry a valid signature of {key.arn}"
        more = f" (and {len(bad) - 1} later record(s) as well)" if len(bad) > 1 else ""
        failures.append(
            f"record {first.seq} {why}: it was written or rewritten by someone other than the recorder{more}"
        )
    return failures, notes
