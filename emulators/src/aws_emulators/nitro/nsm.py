"""The NSM (Nitro Security Module) of one enclave, over a local stream socket in place of ``/dev/nsm``.

Requests and responses are the NSM API's, CBOR-encoded as its library encodes them: ``{"Attestation":
{"user_data", "nonce", "public_key"}}`` answered ``{"Attestation": {"document"}}``, ``{"DescribePCR": {"index"}}``
answered ``{"DescribePCR": {"lock", "data"}}``, ``"GetRandom"`` answered ``{"GetRandom": {"random"}}``, and a
refusal ``{"Error": "<ErrorCode>"}`` (``InvalidArgument``, ``InvalidIndex``, ``InputTooLarge``,
``InvalidOperation``). Each message on the socket is its length (4 bytes, big-endian) then its CBOR.

The PCRs are those of the image the NSM was started for (``measurement.measure_image``): the enclave asks for a
document and cannot choose what it attests.

    python -m aws_emulators.nitro.nsm --image IMAGE --socket PATH --authority DIR
"""

from __future__ import annotations

import argparse
import datetime
import os
import secrets
import socket
import socketserver
import struct
import threading
from pathlib import Path
from typing import Any

import cbor2

from aws_emulators.nitro.attestation import NONCE_LIMIT, PUBLIC_KEY_SIZE, USER_DATA_LIMIT, AttestationDocument
from aws_emulators.nitro.attestation import sign_document as _sign
from aws_emulators.nitro.authority import AttestationAuthority, NsmSigner
from aws_emulators.nitro.measurement import measure_image

REQUEST_LIMIT = 8 * 1024
RANDOM_BYTES = 256  # what one GetRandom returns on Nitro
_LENGTH = struct.Struct(">I")


def read_message(stream: socket.socket, limit: int) -> bytes | None:
    """One length-prefixed message, or None at the end of the stream."""
    header = _read_exactly(stream, _LENGTH.size)
    if header is None:
        return None
    (length,) = _LENGTH.unpack(header)
    if length > limit:
        raise ValueError(f"a message of {length} bytes is over the limit of {limit}")
    body = _read_exactly(stream, length)
    if body is None:
        raise ValueError("the stream ended inside a message")
    return body


def _read_exactly(stream: socket.socket, size: int) -> bytes | None:
    chunks, left = [], size
    while left:
        chunk = stream.recv(left)
        if not chunk:
            if left == size:
                return None
            raise ValueError("the stream ended inside a message")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def write_message(stream: socket.socket, body: bytes) -> None:
    stream.sendall(_LENGTH.pack(len(body)) + body)


class Nsm:
    """What the NSM answers, for the enclave started from an image with ``pcrs``."""

    def __init__(self, pcrs: dict[int, bytes], signer: NsmSigner, module_id: str) -> None:
        self.pcrs = dict(pcrs)
        self.signer = signer
        self.module_id = module_id

    def content(
        self,
        *,
        at: datetime.datetime | None = None,
        public_key: bytes | None = None,
        user_data: bytes | None = None,
        nonce: bytes | None = None,
    ) -> AttestationDocument:
        """The document this NSM signs at ``at`` (now by default) for these requester's fields."""
        at = at or datetime.datetime.now(tz=datetime.UTC)
        return AttestationDocument(
            module_id=self.module_id,
            timestamp=int(at.timestamp() * 1000),
            pcrs=self.pcrs,
            certificate=self.signer.certificate,
            cabundle=self.signer.cabundle,
            public_key=public_key,
            user_data=user_data,
            nonce=nonce,
        )

    def answer(self, request: Any) -> dict[str, Any]:
        if request == "GetRandom":
            return {"GetRandom": {"random": secrets.token_bytes(RANDOM_BYTES)}}
        if not isinstance(request, dict) or len(request) != 1:
            return {"Error": "InvalidOperation"}
        ((operation, arguments),) = request.items()
        if not isinstance(arguments, dict):
            return {"Error": "InvalidArgument"}
        if operation == "DescribePCR":
            index = arguments.get("index")
            if not isinstance(index, int) or index not in self.pcrs:
                return {"Error": "InvalidIndex"}
            return {"DescribePCR": {"lock": True, "data": self.pcrs[index]}}
        if operation == "Attestation":
            return self._attestation(arguments)
        return {"Error": "InvalidOperation"}

    def _attestation(self, arguments: dict[str, Any]) -> dict[str, Any]:
        fields: dict[str, bytes | None] = {}
        for name, low, high in (
            ("public_key", *PUBLIC_KEY_SIZE),
            ("user_data", 0, USER_DATA_LIMIT),
            ("nonce", 0, NONCE_LIMIT),
        ):
            value = arguments.get(name)
            if value is not None and not isinstance(value, bytes):
                return {"Error": "InvalidArgument"}
            if value is not None and not low <= len(value) <= high:
                return {"Error": "InputTooLarge" if len(value) > high else "InvalidArgument"}
            fields[name] = value
        document = self.content(public_key=fields["public_key"], user_data=fields["user_data"], nonce=fields["nonce"])
        return {"Attestation": {"document": _sign(document, self.signer.key)}}


class _Handler(socketserver.BaseRequestHandler):
    server: NsmServer

    def handle(self) -> None:
        while True:
            try:
                body = read_message(self.request, REQUEST_LIMIT)
            except (ValueError, OSError):
                return
            if body is None:
                return
            try:
                request = cbor2.loads(body)
            except (cbor2.CBORDecodeError, ValueError, TypeError, RecursionError):
                response: dict[str, Any] = {"Error": "InvalidArgument"}
            else:
                response = self.server.nsm.answer(request)
            write_message(self.request, cbor2.dumps(response))


class NsmServer(socketserver.ThreadingUnixStreamServer):
    """The NSM on a Unix socket at ``path`` (mode 0600: the enclave's process only)."""

    daemon_threads = True

    def __init__(self, path: Path, nsm: Nsm) -> None:
        self.nsm = nsm
        path.unlink(missing_ok=True)
        super().__init__(str(path), _Handler)
        path.chmod(0o600)

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, name="nsm", daemon=True)
        thread.start()
        return thread


def nsm_for_image(image: Path, authority: AttestationAuthority) -> Nsm:
    """The NSM of an enclave started from ``image``: its measurements, and a signing key the authority certified."""
    module_id = f"i-{secrets.token_hex(8)}-enc{secrets.token_hex(8)}"
    return Nsm(measure_image(image), authority.issue_signer(module_id), module_id)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", type=Path, required=True, help="the enclave's image file, which it measures")
    parser.add_argument("--socket", type=Path, required=True, help="where the enclave reaches it")
    parser.add_argument("--authority", type=Path, required=True, help="the attestation root's folder")
    args = parser.parse_args()
    server = NsmServer(args.socket, nsm_for_image(args.image, AttestationAuthority.ensure(args.authority)))
    print(f"NSM for PCR0 {server.nsm.pcrs[0].hex()} on {args.socket} (pid {os.getpid()})", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
