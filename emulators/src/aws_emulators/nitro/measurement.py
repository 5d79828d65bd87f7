"""An enclave's measurements (PCRs) from its image's content, as ``nitro-cli build-enclave`` reports them for an
EIF: each register is SHA-384 extended once from zero, ``PCR = SHA384(0^48 || SHA384(content))``.

- PCR0, the image: every byte of the image file, so an image changed by one byte has another PCR0 (the value
  KMS's ``kms:RecipientAttestation:ImageSha384`` and ``PCR0`` conditions compare).
- PCR1, the kernel and boot: on AWS the EIF's kernel; here the local runner's boot identifier, one value for every
  image (``BOOT``).
- PCR2, the application: on AWS the EIF's user-space ramdisk; here the image is nothing but its application, so
  PCR2 measures the same content as PCR0.
- PCR3 to PCR15 are zero: no instance role or signing certificate is measured locally (PCR3, PCR8 on AWS).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

PCR_SIZE = 48
PCR_COUNT = 16  # the registers an enclave's document lists
BOOT = b"local-enclave-runner/1"
_CHUNK = 1 << 20


def extend(register: bytes, measured_digest: bytes) -> bytes:
    """A PCR extended with a digest: SHA384(register || digest)."""
    return hashlib.sha384(register + measured_digest).digest()


def _digest_of_file(path: Path) -> bytes:
    digest = hashlib.sha384()
    with path.open("rb") as image:
        while chunk := image.read(_CHUNK):
            digest.update(chunk)
    return digest.digest()


def measure_image(image: Path) -> dict[int, bytes]:
    """The 16 PCRs of an enclave started from ``image``."""
    zero = bytes(PCR_SIZE)
    content = extend(zero, _digest_of_file(image))
    pcrs = dict.fromkeys(range(PCR_COUNT), zero)
    pcrs[0] = content
    pcrs[1] = extend(zero, hashlib.sha384(BOOT).digest())
    pcrs[2] = content
    return pcrs


def image_sha384(image: Path) -> str:
    """PCR0 in hex: the enclave measurement a key policy pins (``kms:RecipientAttestation:ImageSha384``)."""
    return measure_image(image)[0].hex()
