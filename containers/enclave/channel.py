"""The one channel between the parent instance and its enclave: a stream socket carrying CBOR messages, each
prefixed by its length (4 bytes, big-endian). On a Nitro instance it is vsock (``vsock:<cid>:<port>``); on the
local stack a Unix socket (``unix:<path>``). Only ciphertext, the encrypted data key, the owner's public key and
the parent's temporary credentials cross it inward; only sealed results and the attestation document outward."""

from __future__ import annotations

import socket
import struct
from typing import Any

import cbor2

MESSAGE_LIMIT = 256 * 1024**2  # a shard's encrypted records and their framing
_LENGTH = struct.Struct(">I")


class ChannelError(Exception):
    pass


def _family_and_address(address: str) -> tuple[int, Any]:
    kind, _, rest = address.partition(":")
    if kind == "unix" and rest:
        return socket.AF_UNIX, rest
    if kind == "vsock":
        cid, _, port = rest.partition(":")
        if cid.isdigit() and port.isdigit():
            return socket.AF_VSOCK, (int(cid), int(port))
    raise ChannelError(f"an enclave address is vsock:<cid>:<port> or unix:<path>, not {address!r}")


def listen(address: str) -> socket.socket:
    family, where = _family_and_address(address)
    server = socket.socket(family, socket.SOCK_STREAM)
    server.bind(where)
    server.listen()
    return server


def connect(address: str, timeout: float) -> socket.socket:
    family, where = _family_and_address(address)
    stream = socket.socket(family, socket.SOCK_STREAM)
    stream.settimeout(timeout)
    try:
        stream.connect(where)
    except OSError as error:
        stream.close()
        raise ChannelError(f"the enclave at {address} could not be reached: {error.strerror or error}") from error
    return stream


def write_frame(stream: socket.socket, body: bytes, limit: int) -> None:
    """``body`` prefixed by its length, the framing of this channel and of the NSM emulator's socket."""
    if len(body) > limit:
        raise ChannelError(f"a message of {len(body)} bytes is over the channel's limit of {limit}")
    stream.sendall(_LENGTH.pack(len(body)) + body)


def read_frame(stream: socket.socket, limit: int) -> bytes | None:
    """The next frame's body, or None when the other side closed the stream between frames."""
    header = _read(stream, _LENGTH.size, allow_end=True)
    if header is None:
        return None
    (length,) = _LENGTH.unpack(header)
    if length > limit:
        raise ChannelError(f"a message of {length} bytes is over the channel's limit of {limit}")
    return _read(stream, length, allow_end=False)


def send(stream: socket.socket, message: dict[str, Any]) -> None:
    write_frame(stream, cbor2.dumps(message), MESSAGE_LIMIT)


def receive(stream: socket.socket) -> dict[str, Any] | None:
    """The next message, or None when the other side closed the channel between messages."""
    body = read_frame(stream, MESSAGE_LIMIT)
    if body is None:
        return None
    try:
        message = cbor2.loads(body)
    except (cbor2.CBORDecodeError, ValueError, RecursionError) as error:
        raise ChannelError("a message is not CBOR") from error
    if not isinstance(message, dict):
        raise ChannelError("a message is not a map")
    return message


def _read(stream: socket.socket, size: int, *, allow_end: bool) -> bytes | None:
    chunks, left = [], size
    while left:
        chunk = stream.recv(min(left, 1 << 20))
        if not chunk:
            if allow_end and left == size:
                return None
            raise ChannelError("the channel closed inside a message")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)
