"""KMS's ``Recipient`` parameter, which ministack ignores: a Nitro enclave's attested calls.

AWS KMS, on ``Decrypt``, ``GenerateDataKey`` or ``GenerateRandom`` with ``Recipient`` (``AttestationDocument``,
``KeyEncryptionAlgorithm``): verifies the attestation document's signature and chain to the Nitro root, makes the
document's measurements the values of the key policy's ``kms:RecipientAttestation:ImageSha384`` and
``kms:RecipientAttestation:PCR<n>`` condition keys, and answers ``CiphertextForRecipient``: the plaintext in a CMS
EnvelopedData (the content under AES-256-CBC, its key under the document's RSA public key with RSAES-OAEP and
SHA-256), and no ``Plaintext``. Without ``Recipient`` those condition keys are absent, so a policy statement that
names them never applies (AWS: "effective only when the Recipient parameter ... specifies a signed attestation
document").

Here the root is the local stack's attestation root (``LOCAL_ATTESTATION_ROOT``, a PEM file the NSM emulator's
authority made): no document verifies while it is unset, as no document verifies on AWS but AWS's root's. AWS
documents no age limit for a document; this emulation refuses one older than ``LOCAL_ATTESTATION_MAX_AGE_SECONDS``
(300 by default), so that a document replayed later is refused here: the enclave asks for a fresh document for
every call, which holds on AWS either way."""

from __future__ import annotations

import base64
import datetime
import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

from asn1crypto import algos, cms
from cryptography import x509
from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.padding import MGF1, OAEP
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from aws_emulators.nitro.attestation import AttestationDocument, AttestationRefused, verify_document

ROOT_VARIABLE = "LOCAL_ATTESTATION_ROOT"
MAX_AGE_VARIABLE = "LOCAL_ATTESTATION_MAX_AGE_SECONDS"
DEFAULT_MAX_AGE = 300.0
KEY_ENCRYPTION_ALGORITHM = "RSAES_OAEP_SHA_256"
OPERATIONS = ("Decrypt", "GenerateDataKey", "GenerateRandom")  # the calls that release plaintext
RSA_SIZES = (2048, 3072, 4096)
CONDITION_PREFIX = "kms:recipientattestation:"


class RecipientRefused(Exception):
    """A ``Recipient`` KMS refuses, with the error code it answers."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def trusted_root() -> x509.Certificate | None:
    path = os.environ.get(ROOT_VARIABLE)
    if not path:
        return None
    return x509.load_pem_x509_certificate(Path(path).read_bytes())


def _max_age() -> datetime.timedelta:
    return datetime.timedelta(seconds=float(os.environ.get(MAX_AGE_VARIABLE) or DEFAULT_MAX_AGE))


def verified_recipient(
    recipient: Any, root: x509.Certificate | None, *, now: datetime.datetime | None = None
) -> tuple[AttestationDocument, rsa.RSAPublicKey]:
    """The attestation document of a ``Recipient`` and its RSA public key, once both are valid."""
    if not isinstance(recipient, dict):
        raise RecipientRefused("ValidationException", "Recipient must be a structure")
    if recipient.get("KeyEncryptionAlgorithm") != KEY_ENCRYPTION_ALGORITHM:
        raise RecipientRefused(
            "ValidationException", f"Recipient's KeyEncryptionAlgorithm must be {KEY_ENCRYPTION_ALGORITHM}"
        )
    try:
        document = base64.b64decode(str(recipient.get("AttestationDocument") or ""), validate=True)
    except ValueError as error:
        raise RecipientRefused("ValidationException", "Recipient's AttestationDocument is not base64") from error
    if root is None:
        raise RecipientRefused("ValidationException", f"no attestation root is trusted ({ROOT_VARIABLE} is unset)")
    try:
        content = verify_document(document, root, now=now, max_age=_max_age())
    except AttestationRefused as error:
        raise RecipientRefused("ValidationException", f"invalid attestation document: {error.detail}") from error
    if content.public_key is None:
        raise RecipientRefused("ValidationException", "the attestation document carries no public key")
    try:
        public_key = serialization.load_der_public_key(content.public_key)
    except ValueError as error:
        raise RecipientRefused("ValidationException", "the attestation document's public key does not parse") from error
    if not isinstance(public_key, rsa.RSAPublicKey) or public_key.key_size not in RSA_SIZES:
        raise RecipientRefused("ValidationException", "the attestation document's public key must be RSA 2048 to 4096")
    return content, public_key


def condition_keys(document: AttestationDocument) -> dict[str, str]:
    """The key policy's attestation condition keys (lower case, as the evaluator looks them up), hex values."""
    keys = {f"{CONDITION_PREFIX}pcr{index}": value.hex() for index, value in document.pcrs.items()}
    keys[f"{CONDITION_PREFIX}imagesha384"] = document.pcrs[0].hex()
    return keys


def envelope(plaintext: bytes, public_key: rsa.RSAPublicKey) -> bytes:
    """``CiphertextForRecipient``: ``plaintext`` in a CMS EnvelopedData for ``public_key`` (DER ContentInfo)."""
    content_key, iv = secrets.token_bytes(32), secrets.token_bytes(16)
    padder = padding.PKCS7(128).padder()
    padded = padder.update(plaintext) + padder.finalize()
    encryptor = Cipher(algorithms.AES(content_key), modes.CBC(iv)).encryptor()
    encrypted_content = encryptor.update(padded) + encryptor.finalize()
    encrypted_key = public_key.encrypt(
        content_key, OAEP(mgf=MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    )
    subject_key_identifier = x509.SubjectKeyIdentifier.from_public_key(public_key).digest
    oaep_sha256 = algos.RSAESOAEPParams(
        {
            "hash_algorithm": {"algorithm": "sha256"},
            "mask_gen_algorithm": {"algorithm": "mgf1", "parameters": {"algorithm": "sha256"}},
        }
    )
    recipient = cms.KeyTransRecipientInfo(
        {
            "version": "v2",
            "rid": cms.RecipientIdentifier({"subject_key_identifier": subject_key_identifier}),
            "key_encryption_algorithm": {"algorithm": "rsaes_oaep", "parameters": oaep_sha256},
            "encrypted_key": encrypted_key,
        }
    )
    enveloped = cms.EnvelopedData(
        {
            "version": "v2",
            "recipient_infos": [cms.RecipientInfo({"ktri": recipient})],
            "encrypted_content_info": {
                "content_type": "data",
                "content_encryption_algorithm": {"algorithm": "aes256_cbc", "parameters": iv},
                "encrypted_content": encrypted_content,
            },
        }
    )
    return bytes(cms.ContentInfo({"content_type": "enveloped_data", "content": enveloped}).dump())


def _error(code: str, message: str) -> tuple[int, dict[str, str], bytes]:
    body = json.dumps({"__type": code, "message": message}).encode()
    return 400, {"Content-Type": "application/x-amz-json-1.1", "x-amzn-errortype": code}, body


def with_recipient(
    operation: Callable[[dict[str, Any]], tuple[int, dict[str, str], bytes]],
) -> Callable[[dict[str, Any]], tuple[int, dict[str, str], bytes]]:
    """ministack's handler of an operation that releases plaintext, answering ``Recipient`` as AWS does: the
    document verified first, then the operation itself, then its ``Plaintext`` enveloped to the document's key."""

    def handler(data: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
        if "Recipient" not in data:
            return operation(data)
        try:
            _, public_key = verified_recipient(data["Recipient"], trusted_root())
        except RecipientRefused as refusal:
            return _error(refusal.code, refusal.message)
        status, headers, body = operation({key: value for key, value in data.items() if key != "Recipient"})
        if status != 200:
            return status, headers, body
        answer = json.loads(body)
        plaintext = base64.b64decode(answer.pop("Plaintext"))
        answer["CiphertextForRecipient"] = base64.b64encode(envelope(plaintext, public_key)).decode()
        answer.pop("KeyMaterialId", None)
        return status, headers, json.dumps(answer).encode()

    return handler


def request_condition_keys(iam_action: str, body: bytes) -> dict[str, str]:
    """The attestation condition keys of a request: present only when it carries a ``Recipient`` whose document
    verifies (a forged document's measurements are never what a policy is evaluated on)."""
    if iam_action not in {f"kms:{operation}" for operation in OPERATIONS}:
        return {}
    try:
        data = json.loads(body or b"{}")
    except (ValueError, UnicodeDecodeError):
        return {}
    if not isinstance(data, dict) or "Recipient" not in data:
        return {}
    try:
        document, _ = verified_recipient(data["Recipient"], trusted_root())
    except (RecipientRefused, OSError, ValueError):
        return {}
    return condition_keys(document)


def install() -> None:
    """Put ``Recipient`` in place on ministack's KMS operations that release plaintext (each handler is looked up
    by name at every request)."""
    from ministack.services import kms

    for name in ("_decrypt", "_generate_data_key", "_generate_random"):
        setattr(kms, name, with_recipient(getattr(kms, name)))
