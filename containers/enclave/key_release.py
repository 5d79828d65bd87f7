"""The data key of a bundle, released by KMS to this enclave only.

The enclave makes an ephemeral RSA key pair, asks its NSM for an attestation document carrying the public key (and
the served model's digest in ``user_data``, so the document says what will read the records), and calls KMS
``Decrypt`` with ``Recipient``. KMS verifies the document, evaluates the key policy's
``kms:RecipientAttestation:*`` conditions against its measurements, and answers ``CiphertextForRecipient``: the
data key in a CMS EnvelopedData only the ephemeral private key opens. The enclave opens it itself; the plaintext
key never crosses the parent, the proxy or the network.

``Decrypt`` always carries ``Recipient``: without it a key policy's attestation conditions never apply (the
public reference sample's mistake), and an answer that carries ``Plaintext`` anyway is refused as the sign of a
KMS that ignored it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from asn1crypto import cms
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives import padding as block_padding
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.padding import MGF1, OAEP
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from containers.enclave.nsm import Nsm

KEY_ENCRYPTION_ALGORITHM = "RSAES_OAEP_SHA_256"
EPHEMERAL_KEY_BITS = 2048  # what KMS's Recipient takes (RSA 2048 in a DER SubjectPublicKeyInfo)
ENVELOPE_LIMIT = 16 * 1024
DATA_KEY_SIZES = (16, 24, 32)


class KeyReleaseRefused(Exception):
    """KMS did not release the key to this enclave, or its answer is not what KMS answers a ``Recipient``."""


@dataclass(frozen=True)
class ReleasedKey:
    data_key: bytes
    attestation_document: bytes  # what this enclave presented: its measurements, its key, the model's digest


def open_envelope(envelope: bytes, private_key: rsa.RSAPrivateKey) -> bytes:
    """The content of ``CiphertextForRecipient``: a CMS EnvelopedData with one key-transport recipient
    (RSAES-OAEP with SHA-256) and its content under AES-256-CBC, as KMS writes it."""
    if not 0 < len(envelope) <= ENVELOPE_LIMIT:
        raise KeyReleaseRefused(f"an envelope is 1 to {ENVELOPE_LIMIT} bytes")
    try:
        info = cms.ContentInfo.load(envelope)
        if info["content_type"].native != "enveloped_data":
            raise KeyReleaseRefused("the envelope is not a CMS EnvelopedData")
        enveloped = info["content"]
        recipients = list(enveloped["recipient_infos"])
        if len(recipients) != 1 or recipients[0].name != "ktri":
            raise KeyReleaseRefused("the envelope must have one key-transport recipient")
        recipient = recipients[0].chosen
        algorithm = recipient["key_encryption_algorithm"]
        if algorithm["algorithm"].native != "rsaes_oaep":
            raise KeyReleaseRefused("the envelope's key is not under RSAES-OAEP")
        oaep = algorithm["parameters"]
        if oaep["hash_algorithm"]["algorithm"].native != "sha256" or (
            oaep["mask_gen_algorithm"]["parameters"]["algorithm"].native != "sha256"
        ):
            raise KeyReleaseRefused("the envelope's RSAES-OAEP is not with SHA-256")
        content = enveloped["encrypted_content_info"]
        if content["content_encryption_algorithm"]["algorithm"].native != "aes256_cbc":
            raise KeyReleaseRefused("the envelope's content is not under AES-256-CBC")
        iv = content["content_encryption_algorithm"]["parameters"].native
        encrypted_key = recipient["encrypted_key"].native
        encrypted_content = content["encrypted_content"].native
    except (ValueError, KeyError, TypeError) as error:
        raise KeyReleaseRefused("the envelope is not a CMS structure KMS writes") from error
    if not isinstance(iv, bytes) or len(iv) != 16 or not isinstance(encrypted_content, bytes):
        raise KeyReleaseRefused("the envelope's content has no 16-byte IV or no ciphertext")
    try:
        content_key = private_key.decrypt(
            encrypted_key, OAEP(mgf=MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
        )
        decryptor = Cipher(algorithms.AES(content_key), modes.CBC(iv)).decryptor()
        padded = decryptor.update(encrypted_content) + decryptor.finalize()
        unpadder = block_padding.PKCS7(128).unpadder()
        return unpadder.update(padded) + unpadder.finalize()
    except ValueError as error:
        raise KeyReleaseRefused("the envelope does not open with this enclave's key") from error


class KeyRelease:
    """Data keys from KMS for this enclave: ``kms`` a KMS client (through the parent's proxy on AWS), ``nsm``
    this enclave's NSM."""

    def __init__(self, kms: Any, nsm: Nsm) -> None:
        self.kms = kms
        self.nsm = nsm

    def data_key(
        self,
        encrypted_data_key: bytes,
        *,
        encryption_context: dict[str, str],
        model_digest: bytes,
        nonce: bytes | None = None,
    ) -> ReleasedKey:
        """The data key, released to this enclave; ``model_digest`` and ``nonce`` (the shard served) go into the
        attestation document, which is kept as the proof of what served the shard."""
        private_key = rsa.generate_private_key(public_exponent=65537, key_size=EPHEMERAL_KEY_BITS)
        public_key = private_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        document = self.nsm.attestation(public_key=public_key, user_data=model_digest, nonce=nonce)
        answer = self.kms.decrypt(
            CiphertextBlob=encrypted_data_key,
            EncryptionContext=encryption_context,
            Recipient={"AttestationDocument": document, "KeyEncryptionAlgorithm": KEY_ENCRYPTION_ALGORITHM},
        )
        if answer.get("Plaintext"):
            raise KeyReleaseRefused("KMS answered the plaintext key: it ignored Recipient, so no policy applied")
        envelope = answer.get("CiphertextForRecipient")
        if not isinstance(envelope, bytes):
            raise KeyReleaseRefused("KMS answered no CiphertextForRecipient")
        data_key = open_envelope(envelope, private_key)
        if len(data_key) not in DATA_KEY_SIZES:
            raise KeyReleaseRefused(f"the released key is {len(data_key)} bytes, not an AES key")
        return ReleasedKey(data_key, document)
