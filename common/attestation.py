"""What served an enclave shard, as its attestation document proves it: the relying party's side of AWS Nitro
Enclaves' attestation, for the audit (and anyone else who must not take the parent instance's word).

The document is the one the enclave presented to KMS for the shard's data key (``containers/enclave/key_release``):
an untagged COSE_Sign1 (ES384) over a CBOR map (``module_id``, ``digest``, ``timestamp``, ``pcrs``, ``certificate``,
``cabundle``, ``public_key``, ``user_data``, ``nonce``), signed by the NSM's key, whose certificate chains to the
Nitro attestation root through ``cabundle`` (root first). ``verify_attestation`` checks what AWS's "verifying the
root of trust" asks: the structure, the chain from the trusted root to the signing certificate at the document's own
time (the NSM's certificates live hours; an audit runs later), and the signature. It then reads what the enclave
bound into the document: PCR0 (the image measurement the key policy pins), ``user_data`` (the digest of the model
the enclave served) and ``nonce`` (the shard it asked the key for, ``ShardBinding.attestation_nonce``).

The trusted root is AWS's Nitro Enclaves root (G1, pinned below with its published fingerprint), or the PEM file
``FHE_ATTESTATION_ROOT`` names: the local stack's own root, as ``AWS_CA_BUNDLE`` names its TLS authority.
"""

from __future__ import annotations

import datetime
import itertools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cbor2
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from pycose.algorithms import Es384
from pycose.headers import Algorithm
from pycose.keys.curves import P384
from pycose.keys.ec2 import EC2Key
from pycose.messages.sign1message import Sign1Message

ROOT_VARIABLE = "FHE_ATTESTATION_ROOT"
DOCUMENT_LIMIT = 16 * 1024  # a document with its chain is about 4.5 KiB
MEASUREMENT_BYTES = 48  # PCR0: SHA-384 of the enclave image

# AWS_NitroEnclaves_Root-G1 (aws-nitro-enclaves.amazonaws.com), pinned rather than fetched; checked against the
# SHA-256 fingerprint AWS publishes before it is trusted.
AWS_NITRO_ROOT_FINGERPRINT = "641a0321a3e244efe456463195d606317ed7cdcc3c1756e09893f3c68f79bb5b"
AWS_NITRO_ROOT_PEM = b"""-----BEGIN CERTIFICATE-----
MIICETCCAZagAwIBAgIRAPkxdWgbkK/hHUbMtOTn+FYwCgYIKoZIzj0EAwMwSTEL
MAkGA1UEBhMCVVMxDzANBgNVBAoMBkFtYXpvbjEMMAoGA1UECwwDQVdTMRswGQYD
VQQDDBJhd3Mubml0cm8tZW5jbGF2ZXMwHhcNMTkxMDI4MTMyODA1WhcNNDkxMDI4
MTQyODA1WjBJMQswCQYDVQQGEwJVUzEPMA0GA1UECgwGQW1hem9uMQwwCgYDVQQL
DANBV1MxGzAZBgNVBAMMEmF3cy5uaXRyby1lbmNsYXZlczB2MBAGByqGSM49AgEG
BSuBBAAiA2IABPwCVOumCMHzaHDimtqQvkY4MpJzbolL//Zy2YlES1BR5TSksfbb
48C8WBoyt7F2Bw7eEtaaP+ohG2bnUs990d0JX28TcPQXCEPZ3BABIeTPYwEoCWZE
h8l5YoQwTcU/9KNCMEAwDwYDVR0TAQH/BAUwAwEB/zAdBgNVHQ4EFgQUkCW1DdkF
R+eWw5b6cp3PmanfS5YwDgYDVR0PAQH/BAQDAgGGMAoGCCqGSM49BAMDA2kAMGYC
MQCjfy+Rocm9Xue4YnwWmNJVA44fA0P5W2OpYow9OYCVRaEevL8uO1XYru5xtMPW
rfMCMQCi85sWBbJwKKXdS6BptQFuZbT73o/gBh1qUxl/nNr12UO8Yfwr6wPLb+6N
IwLz3/Y=
-----END CERTIFICATE-----
"""


class AttestationInvalid(Exception):
    """A document that does not prove what served a shard; the message says which check it failed."""


@dataclass(frozen=True)
class Attestation:
    """What a verified document says served a shard."""

    image_sha384: str  # PCR0, hex: the enclave image's measurement
    model_digest: str  # user_data, hex: the sha256 of the model the enclave served
    nonce: bytes | None  # the shard it was made for (ShardBinding.attestation_nonce)
    issued: datetime.datetime
    module_id: str


def aws_nitro_root() -> x509.Certificate:
    root = x509.load_pem_x509_certificate(AWS_NITRO_ROOT_PEM)
    if root.fingerprint(hashes.SHA256()).hex() != AWS_NITRO_ROOT_FINGERPRINT:
        raise AttestationInvalid("the pinned AWS Nitro root does not have AWS's published fingerprint")
    return root


def trusted_root(path: str | os.PathLike[str] | None = None) -> x509.Certificate:
    """The root documents must chain to: the PEM file ``path`` (or ``FHE_ATTESTATION_ROOT``) names, else AWS's."""
    named = path or os.environ.get(ROOT_VARIABLE)
    if not named:
        return aws_nitro_root()
    try:
        return x509.load_pem_x509_certificate(Path(named).read_bytes())
    except (OSError, ValueError) as error:
        raise AttestationInvalid(f"the attestation root {named} is not a readable PEM certificate: {error}") from None


def _payload(document: bytes) -> tuple[Sign1Message, dict[Any, Any]]:
    if not 0 < len(document) <= DOCUMENT_LIMIT:
        raise AttestationInvalid(f"a document is 1 to {DOCUMENT_LIMIT} bytes, not {len(document)}")
    try:
        structure = cbor2.loads(document)
        if isinstance(structure, cbor2.CBORTag) and structure.tag == 18:  # COSE_Sign1's tag, which the NSM omits
            structure = structure.value
        if not isinstance(structure, list) or len(structure) != 4:
            raise AttestationInvalid("the document is not a COSE_Sign1 structure")
        message = Sign1Message.from_cose_obj(list(structure), allow_unknown_attributes=True)
        payload = cbor2.loads(message.payload or b"")
    except AttestationInvalid:
        raise
    except Exception as error:  # cbor2 and pycose raise several kinds on bytes that are no document
        raise AttestationInvalid(f"the document does not parse ({type(error).__name__})") from None
    if message.phdr.get(Algorithm) is not Es384:
        raise AttestationInvalid("the document is not signed with ES384")
    if not isinstance(payload, dict):
        raise AttestationInvalid("the document's payload is not a map")
    return message, payload


def _chain(payload: dict[Any, Any]) -> list[x509.Certificate]:
    bundle, leaf = payload.get("cabundle"), payload.get("certificate")
    if not isinstance(bundle, list) or not bundle or not all(isinstance(c, bytes) for c in [*bundle, leaf]):
        raise AttestationInvalid("the document carries no certificate chain")
    try:
        return [x509.load_der_x509_certificate(der) for der in [*bundle, leaf]]
    except ValueError:
        raise AttestationInvalid("a certificate of the document's chain does not parse") from None


def _verify_chain(chain: list[x509.Certificate], root: x509.Certificate, at: datetime.datetime) -> None:
    if chain[0] != root:
        raise AttestationInvalid("the document's chain does not start at the trusted root")
    for issuer, subject in itertools.pairwise(chain):
        try:
            authority = issuer.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            authority = False
        if not authority:
            raise AttestationInvalid(f"{issuer.subject.rfc4514_string()} in the chain is no certificate authority")
        try:
            subject.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature):
            raise AttestationInvalid(f"{subject.subject.rfc4514_string()} was not issued by its chain") from None
    for certificate in chain:
        if not certificate.not_valid_before_utc <= at <= certificate.not_valid_after_utc:
            raise AttestationInvalid(f"{certificate.subject.rfc4514_string()} was not valid at the document's time")


def verify_attestation(document: bytes, root: x509.Certificate) -> Attestation:
    """What ``document`` proves, once its chain and signature verify against ``root``."""
    message, payload = _payload(document)
    timestamp, pcrs, user_data = payload.get("timestamp"), payload.get("pcrs"), payload.get("user_data")
    if not isinstance(timestamp, int) or isinstance(timestamp, bool) or timestamp <= 0:
        raise AttestationInvalid("the document has no timestamp")
    issued = datetime.datetime.fromtimestamp(timestamp / 1000, tz=datetime.UTC)
    chain = _chain(payload)
    _verify_chain(chain, root, issued)
    signer = chain[-1].public_key()
    if not isinstance(signer, ec.EllipticCurvePublicKey) or not isinstance(signer.curve, ec.SECP384R1):
        raise AttestationInvalid("the document's signing key is not on P-384")
    numbers = signer.public_numbers()
    message.key = EC2Key(crv=P384, x=numbers.x.to_bytes(48, "big"), y=numbers.y.to_bytes(48, "big"))
    try:
        signed = message.verify_signature()
    except Exception:  # pycose raises on a signature of the wrong size
        signed = False
    if not signed:
        raise AttestationInvalid("the document's signature does not verify")
    measurement = pcrs.get(0) if isinstance(pcrs, dict) else None
    if not isinstance(measurement, bytes) or len(measurement) != MEASUREMENT_BYTES:
        raise AttestationInvalid("the document has no 48-byte PCR0")
    if not isinstance(user_data, bytes) or not user_data:
        raise AttestationInvalid("the document names no model digest (user_data)")
    nonce = payload.get("nonce")
    module_id = payload.get("module_id")
    return Attestation(
        image_sha384=measurement.hex(),
        model_digest=user_data.hex(),
        nonce=nonce if isinstance(nonce, bytes) else None,
        issued=issued,
        module_id=module_id if isinstance(module_id, str) else "",
    )
