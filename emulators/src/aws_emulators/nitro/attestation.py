"""The attestation document of AWS Nitro Enclaves: a CBOR map in an untagged COSE_Sign1 structure signed with ES384
by the NSM's key, whose certificate chains to the attestation root through ``cabundle`` (root first).

The fields and their limits are AWS's (the Nitro Enclaves user guide, "attestation document"): ``module_id``,
``digest`` (``SHA384``), ``timestamp`` (milliseconds since the epoch), ``pcrs`` (index to 32, 48 or 64 bytes),
``certificate`` and ``cabundle`` (DER), and the requester's optional ``public_key`` (1 to 1024 bytes), ``user_data``
and ``nonce`` (up to 512 bytes each).

``verify_document`` checks what a relying party must (AWS: "verifying the root of trust"): the structure and every
field's type and size, the chain from the pinned root to the signing certificate at the document's time, the COSE
signature, and, where the relying party asks, the document's age, its nonce and its public key. Each refusal names
its reason (``AttestationRefused.reason``)."""

from __future__ import annotations

import datetime
import itertools
from dataclasses import dataclass, field
from typing import Any

import cbor2
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec
from pycose.algorithms import Es384
from pycose.headers import Algorithm
from pycose.keys.curves import P384
from pycose.keys.ec2 import EC2Key
from pycose.messages.sign1message import Sign1Message

DIGEST = "SHA384"
PCR_SIZES = (32, 48, 64)
PCR_COUNT = 32  # the NSM has up to 32 registers
PUBLIC_KEY_SIZE = (1, 1024)
USER_DATA_LIMIT = 512
NONCE_LIMIT = 512
DOCUMENT_LIMIT = 16 * 1024  # a document with a full chain is about 4.5 KiB; anything far larger is not one
CLOCK_SKEW = datetime.timedelta(seconds=30)


class AttestationRefused(Exception):
    """An attestation document that does not verify. ``reason`` names the check it failed: ``malformed``,
    ``untrusted_root``, ``chain``, ``signature``, ``stale``, ``nonce`` or ``public_key``."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"attestation document refused ({reason}): {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class AttestationDocument:
    module_id: str
    timestamp: int  # milliseconds since the epoch
    pcrs: dict[int, bytes]
    certificate: bytes  # DER: the NSM's signing certificate
    cabundle: list[bytes]  # DER, the root first
    public_key: bytes | None = None
    user_data: bytes | None = None
    nonce: bytes | None = None
    digest: str = DIGEST
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def issued_at(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self.timestamp / 1000, tz=datetime.UTC)

    def to_cbor(self) -> bytes:
        return bytes(
            cbor2.dumps(
                {
                    "module_id": self.module_id,
                    "digest": self.digest,
                    "timestamp": self.timestamp,
                    "pcrs": dict(sorted(self.pcrs.items())),
                    "certificate": self.certificate,
                    "cabundle": list(self.cabundle),
                    "public_key": self.public_key,
                    "user_data": self.user_data,
                    "nonce": self.nonce,
                }
            )
        )


def _cose_key(key: ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) -> EC2Key:
    if not isinstance(key.curve, ec.SECP384R1):
        raise ValueError("an attestation document is signed with ES384: the key must be on P-384")
    if isinstance(key, ec.EllipticCurvePrivateKey):
        numbers = key.private_numbers()
        public = numbers.public_numbers
        return EC2Key(
            crv=P384,
            x=public.x.to_bytes(48, "big"),
            y=public.y.to_bytes(48, "big"),
            d=numbers.private_value.to_bytes(48, "big"),
        )
    public = key.public_numbers()
    return EC2Key(crv=P384, x=public.x.to_bytes(48, "big"), y=public.y.to_bytes(48, "big"))


def sign_document(document: AttestationDocument, key: ec.EllipticCurvePrivateKey) -> bytes:
    """The document as the NSM returns it: an untagged COSE_Sign1 with ES384 in its protected header."""
    message = Sign1Message(phdr={Algorithm: Es384}, payload=document.to_cbor())
    message.key = _cose_key(key)
    return bytes(message.encode(tag=False))


def _bytes_field(payload: dict[str, Any], name: str, low: int, high: int, *, optional: bool) -> bytes | None:
    value = payload.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, bytes) or not low <= len(value) <= high:
        raise AttestationRefused("malformed", f"{name} must be {low} to {high} bytes")
    return value


def parse_document(document: bytes) -> tuple[Sign1Message, AttestationDocument]:
    """The COSE structure and its payload, each field's type and size checked; the signature is not."""
    if not isinstance(document, bytes | bytearray) or not 0 < len(document) <= DOCUMENT_LIMIT:
        raise AttestationRefused("malformed", f"a document is 1 to {DOCUMENT_LIMIT} bytes")
    try:
        structure = cbor2.loads(bytes(document))
    except (cbor2.CBORDecodeError, ValueError, TypeError, RecursionError, MemoryError) as error:
        raise AttestationRefused("malformed", "not CBOR") from error
    if isinstance(structure, cbor2.CBORTag):  # COSE_Sign1's tag 18 is allowed, though the NSM does not send it
        structure = structure.value if structure.tag == 18 else None
    if not (
        isinstance(structure, list)
        and len(structure) == 4
        and all(isinstance(part, bytes) for part in (structure[0], structure[2], structure[3]))
    ):
        raise AttestationRefused("malformed", "not a COSE_Sign1 structure")
    try:
        message = Sign1Message.from_cose_obj(list(structure), allow_unknown_attributes=True)
    except Exception as error:  # pycose raises several kinds on a bad header
        raise AttestationRefused("malformed", "the COSE headers do not parse") from error
    if message.phdr.get(Algorithm) is not Es384:
        raise AttestationRefused("malformed", "the document is not signed with ES384")
    try:
        payload = cbor2.loads(message.payload or b"")
    except (cbor2.CBORDecodeError, ValueError, TypeError, RecursionError, MemoryError) as error:
        raise AttestationRefused("malformed", "the payload is not CBOR") from error
    if not isinstance(payload, dict):
        raise AttestationRefused("malformed", "the payload is not a map")
    module_id, digest, timestamp = payload.get("module_id"), payload.get("digest"), payload.get("timestamp")
    if not isinstance(module_id, str) or not module_id:
        raise AttestationRefused("malformed", "module_id must be a non-empty text")
    if digest != DIGEST:
        raise AttestationRefused("malformed", f"digest must be {DIGEST}")
    if not isinstance(timestamp, int) or isinstance(timestamp, bool) or timestamp <= 0:
        raise AttestationRefused("malformed", "timestamp must be a positive integer")
    pcrs = payload.get("pcrs")
    if not isinstance(pcrs, dict) or not 1 <= len(pcrs) <= PCR_COUNT:
        raise AttestationRefused("malformed", f"pcrs must map 1 to {PCR_COUNT} registers")
    for index, value in pcrs.items():
        if not isinstance(index, int) or not 0 <= index < PCR_COUNT:
            raise AttestationRefused("malformed", f"a PCR index must be 0 to {PCR_COUNT - 1}")
        if not isinstance(value, bytes) or len(value) not in PCR_SIZES:
            raise AttestationRefused("malformed", f"PCR{index} must be 32, 48 or 64 bytes")
    certificate = _bytes_field(payload, "certificate", 1, 1024, optional=False)
    cabundle = payload.get("cabundle")
    if (
        not isinstance(cabundle, list)
        or not cabundle
        or not all(isinstance(entry, bytes) and 1 <= len(entry) <= 1024 for entry in cabundle)
    ):
        raise AttestationRefused("malformed", "cabundle must list certificates of 1 to 1024 bytes")
    assert certificate is not None
    return message, AttestationDocument(
        module_id=module_id,
        timestamp=timestamp,
        pcrs=dict(pcrs),
        certificate=certificate,
        cabundle=list(cabundle),
        public_key=_bytes_field(payload, "public_key", *PUBLIC_KEY_SIZE, optional=True),
        user_data=_bytes_field(payload, "user_data", 0, USER_DATA_LIMIT, optional=True),
        nonce=_bytes_field(payload, "nonce", 0, NONCE_LIMIT, optional=True),
    )


def _certificates(document: AttestationDocument) -> list[x509.Certificate]:
    try:
        return [x509.load_der_x509_certificate(der) for der in (*document.cabundle, document.certificate)]
    except ValueError as error:
        raise AttestationRefused("malformed", "a certificate in the chain does not parse") from error


def _verify_chain(chain: list[x509.Certificate], root: x509.Certificate, at: datetime.datetime) -> None:
    """The chain from ``root`` (which must be the bundle's first certificate) to the signing certificate: each
    certificate issued by the one before it, valid at ``at``, and every issuer a certificate authority."""
    if chain[0] != root:
        raise AttestationRefused("untrusted_root", "the document's chain does not start at the trusted root")
    for issuer, subject in itertools.pairwise(chain):
        try:
            constraints = issuer.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            constraints = None
        if constraints is None or not constraints.ca:
            raise AttestationRefused("chain", f"{issuer.subject.rfc4514_string()} is not a certificate authority")
        try:
            subject.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature) as error:
            raise AttestationRefused(
                "chain", f"{subject.subject.rfc4514_string()} was not issued by {issuer.subject.rfc4514_string()}"
            ) from error
    for certificate in chain:
        if not certificate.not_valid_before_utc <= at <= certificate.not_valid_after_utc:
            raise AttestationRefused(
                "chain", f"{certificate.subject.rfc4514_string()} is not valid at the document's time"
            )


def verify_document(
    document: bytes,
    root: x509.Certificate,
    *,
    now: datetime.datetime | None = None,
    max_age: datetime.timedelta | None = None,
    nonce: bytes | None = None,
    public_key: bytes | None = None,
) -> AttestationDocument:
    """The document's content, once it has verified against ``root``: its chain at the document's own time, its
    signature by the chain's last certificate, and, when given, that it is at most ``max_age`` old at ``now``
    (a replayed document is older), that it carries ``nonce`` and that it carries ``public_key``."""
    message, content = parse_document(document)
    chain = _certificates(content)
    _verify_chain(chain, root, content.issued_at)
    signer = chain[-1].public_key()
    if not isinstance(signer, ec.EllipticCurvePublicKey) or not isinstance(signer.curve, ec.SECP384R1):
        raise AttestationRefused("chain", "the signing certificate's key is not on P-384")
    message.key = _cose_key(signer)
    try:
        signed = message.verify_signature()
    except Exception as error:  # pycose raises on a signature of the wrong size
        raise AttestationRefused("signature", "the COSE signature does not verify") from error
    if not signed:
        raise AttestationRefused("signature", "the COSE signature does not verify")
    now = now or datetime.datetime.now(tz=datetime.UTC)
    if content.issued_at > now + CLOCK_SKEW:
        raise AttestationRefused("stale", "the document is dated in the future")
    if max_age is not None and now - content.issued_at > max_age:
        raise AttestationRefused(
            "stale", f"the document is {(now - content.issued_at).total_seconds():.0f} s old (at most {max_age})"
        )
    if nonce is not None and content.nonce != nonce:
        raise AttestationRefused("nonce", "the document does not carry the expected nonce")
    if public_key is not None and content.public_key != public_key:
        raise AttestationRefused("public_key", "the document carries another public key")
    return content
