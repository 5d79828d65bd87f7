"""The enclave's Nitro Security Module (NSM): attestation documents and random bytes, through the NSM API.

Requests and responses are the NSM API's CBOR messages (``{"Attestation": {"user_data", "nonce", "public_key"}}``
answered ``{"Attestation": {"document"}}``; ``"GetRandom"`` answered ``{"GetRandom": {"random"}}``; a refusal
``{"Error": "<code>"}``). Only the transport differs by where the enclave runs:

- on a Nitro instance, the ``/dev/nsm`` device: one ``ioctl`` per request (``_IOWR(0x0A, 0, struct nsm_message)``,
  the request and response buffers as two ``iovec``, as the NSM driver and the NSM API library define them);
- on the local stack, a Unix socket to the NSM emulator, each message framed as the parent-enclave channel frames
  its own (``unix:PATH``).

``FHE_NSM`` names it (``/dev/nsm`` by default)."""

from __future__ import annotations

import ctypes
import fcntl
import os
import socket
from pathlib import Path
from typing import Any, Protocol

import cbor2

from containers.enclave import channel

NSM_VARIABLE = "FHE_NSM"
NSM_DEVICE = "/dev/nsm"
REQUEST_LIMIT = 0x1000  # the NSM driver's limits
RESPONSE_LIMIT = 0x3000


class NsmError(Exception):
    """The NSM refused a request or could not be reached; the message names which."""


class Transport(Protocol):
    def exchange(self, request: bytes) -> bytes: ...


class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("length", ctypes.c_size_t)]


class _NsmMessage(ctypes.Structure):
    _fields_ = [("request", _IoVec), ("response", _IoVec)]


def _iowr(magic: int, number: int, size: int) -> int:
    """Linux's ``_IOWR``: read and write, the argument's size and the driver's magic."""
    read_write = 3
    return (read_write << 30) | (size << 16) | (magic << 8) | number


NSM_IOCTL = _iowr(0x0A, 0, ctypes.sizeof(_NsmMessage))


class DeviceTransport:
    """``/dev/nsm`` on a Nitro instance."""

    def __init__(self, path: str = NSM_DEVICE) -> None:
        self.path = path

    def exchange(self, request: bytes) -> bytes:
        request_buffer = ctypes.create_string_buffer(request, len(request))
        response_buffer = ctypes.create_string_buffer(RESPONSE_LIMIT)
        message = _NsmMessage(
            _IoVec(ctypes.cast(request_buffer, ctypes.c_void_p), len(request)),
            _IoVec(ctypes.cast(response_buffer, ctypes.c_void_p), RESPONSE_LIMIT),
        )
        descriptor = os.open(self.path, os.O_RDWR)
        try:
            fcntl.ioctl(descriptor, NSM_IOCTL, message)  # the driver writes the answer's length back
        finally:
            os.close(descriptor)
        return response_buffer.raw[: message.response.length]


class SocketTransport:
    """The NSM emulator's Unix socket on the local stack."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def exchange(self, request: bytes) -> bytes:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stream:
            stream.settimeout(30)
            stream.connect(str(self.path))
            try:
                channel.write_frame(stream, request, REQUEST_LIMIT)
                answer = channel.read_frame(stream, RESPONSE_LIMIT)
            except channel.ChannelError as error:
                raise NsmError(f"the NSM's socket: {error}") from error
            if answer is None:
                raise NsmError("the NSM closed the connection without answering")
            return answer


def transport_from_environment() -> Transport:
    where = os.environ.get(NSM_VARIABLE, NSM_DEVICE)
    if where.startswith("unix:"):
        return SocketTransport(Path(where.removeprefix("unix:")))
    return DeviceTransport(where)


class Nsm:
    """The NSM API's calls the enclave makes."""

    def __init__(self, transport: Transport | None = None) -> None:
        self.transport = transport or transport_from_environment()

    def _call(self, request: Any, answer: str) -> dict[str, Any]:
        body = cbor2.dumps(request)
        if len(body) > REQUEST_LIMIT:
            raise NsmError(f"an NSM request of {len(body)} bytes is over the limit of {REQUEST_LIMIT}")
        try:
            response = cbor2.loads(self.transport.exchange(body))
        except OSError as error:
            raise NsmError(f"the NSM could not be reached: {error.strerror or error}") from error
        except (cbor2.CBORDecodeError, ValueError) as error:
            raise NsmError("the NSM's answer is not CBOR") from error
        if isinstance(response, dict) and "Error" in response:
            raise NsmError(f"the NSM refused {answer}: {response['Error']}")
        if not isinstance(response, dict) or not isinstance(response.get(answer), dict):
            raise NsmError(f"the NSM's answer to {answer} has an unexpected shape")
        return dict(response[answer])

    def describe_pcr(self, index: int) -> bytes:
        """The value of one of this enclave's measurement registers (PCR0: the image)."""
        data = self._call({"DescribePCR": {"index": index}}, "DescribePCR").get("data")
        if not isinstance(data, bytes) or not data:
            raise NsmError(f"the NSM's answer to DescribePCR {index} carries no value")
        return data

    def attestation(self, *, public_key: bytes, user_data: bytes | None = None, nonce: bytes | None = None) -> bytes:
        """A signed attestation document carrying this enclave's measurements and these fields."""
        request = {"Attestation": {"public_key": public_key, "user_data": user_data, "nonce": nonce}}
        document = self._call(request, "Attestation").get("document")
        if not isinstance(document, bytes) or not document:
            raise NsmError("the NSM's attestation answer carries no document")
        return document
