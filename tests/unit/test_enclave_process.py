"""The enclave's process: the parent-enclave channel (addresses, message limits and shapes refused with a named
error), the server's refusals (a request the enclave cannot use answered with a named refusal, never with data),
and its image (reproducible, holding its whole import closure)."""

from __future__ import annotations

import ast
import threading
from pathlib import Path
from typing import Any

import cbor2
import pytest

from containers.enclave import channel
from containers.enclave.image import SOURCES, build_image
from containers.enclave.nsm import Nsm, SocketTransport
from containers.enclave.server import EnclaveServer

PROJECT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("address", ["tcp:127.0.0.1:80", "vsock:3", "vsock:x:5000", "unix:", "nothing"])
def test_an_address_that_is_neither_vsock_nor_unix_is_refused(address: str) -> None:
    with pytest.raises(channel.ChannelError, match="vsock:<cid>:<port> or unix:<path>"):
        channel.listen(address)


def test_messages_cross_the_channel_and_malformed_ones_are_refused(tmp_path: Path) -> None:
    address = f"unix:{tmp_path / 'c.sock'}"
    listener = channel.listen(address)
    received: list[Any] = []

    def accept() -> None:
        for _ in range(3):
            stream, _ = listener.accept()
            with stream:
                try:
                    received.append(channel.receive(stream))
                except channel.ChannelError as error:
                    received.append(str(error))

    thread = threading.Thread(target=accept)
    thread.start()
    with channel.connect(address, 5) as stream:
        channel.send(stream, {"bytes": b"\x00\x01", "n": 3})
    with channel.connect(address, 5) as stream:
        stream.sendall((channel.MESSAGE_LIMIT + 1).to_bytes(4, "big"))
    with channel.connect(address, 5) as stream:
        body = cbor2.dumps([1, 2])
        stream.sendall(len(body).to_bytes(4, "big") + body)
    thread.join(10)
    listener.close()
    assert received == [
        {"bytes": b"\x00\x01", "n": 3},
        f"a message of {channel.MESSAGE_LIMIT + 1} bytes is over the channel's limit of {channel.MESSAGE_LIMIT}",
        "a message is not a map",
    ]


@pytest.fixture
def server(tmp_path: Path) -> EnclaveServer:
    return EnclaveServer(Nsm(SocketTransport(tmp_path / "no-nsm.sock")))


SHARD = {
    "owner": "alice",
    "bundle_id": "b-0001",
    "shard": 0,
    "encrypted_data_key": b"k",
    "encrypted_records": b"r",
    "owner_public_key": b"p",
}
CREDENTIALS = {"AccessKeyId": "a", "SecretAccessKey": "s", "SessionToken": "t"}


@pytest.mark.parametrize(
    ("request_", "reason"),
    [
        ({"hello": 1}, "invalid_request"),
        ({"model": {"format": "pickle", "content": b"x"}}, "invalid_model"),
        ({"model": "not a map"}, "invalid_model"),
    ],
)
def test_requests_the_enclave_cannot_use_are_refused_by_name(
    server: EnclaveServer, request_: dict[str, Any], reason: str
) -> None:
    assert server.answer(request_)["refused"] == reason


def test_a_shard_before_a_model_or_with_a_malformed_field_is_refused(server: EnclaveServer) -> None:
    request = {"shard": SHARD, "credentials": CREDENTIALS, "region": "us-east-1"}
    assert server.answer(request)["refused"] == "no_model"
    server.model = object()  # type: ignore[assignment]  # any loaded model: the request is refused before use
    for damaged in (
        {**request, "shard": {**SHARD, "owner": "../bob"}},
        {**request, "shard": {**SHARD, "bundle_id": "keys"}},
        {**request, "shard": {**SHARD, "shard": -1}},
        {**request, "shard": {**SHARD, "encrypted_records": b""}},
        {**request, "credentials": {"AccessKeyId": "a"}},
        {key: value for key, value in request.items() if key != "region"},
    ):
        answer = server.answer(damaged)
        assert answer["refused"] == "invalid_request" and set(answer) == {"refused", "detail"}


def test_connecting_to_no_enclave_names_the_address(tmp_path: Path) -> None:
    with pytest.raises(channel.ChannelError, match="could not be reached"):
        channel.connect(f"unix:{tmp_path / 'none.sock'}", 1)


def test_the_enclave_image_is_reproducible_and_changes_with_its_sources(tmp_path: Path) -> None:
    first, second = build_image(tmp_path / "a.pyz"), build_image(tmp_path / "b.pyz")
    assert first.read_bytes() == second.read_bytes()
    sources = tmp_path / "sources"
    for name in SOURCES:
        (sources / name).parent.mkdir(parents=True, exist_ok=True)
        (sources / name).write_bytes((PROJECT / name).read_bytes())
    (sources / SOURCES[-1]).write_bytes((PROJECT / SOURCES[-1]).read_bytes() + b"#")
    assert build_image(tmp_path / "c.pyz", root=sources).read_bytes() != first.read_bytes()


def test_the_image_holds_the_enclave_applications_whole_import_closure(tmp_path: Path) -> None:
    """Every product module the enclave's modules import, at any depth, is in the image."""
    listed = set(SOURCES)
    for name in SOURCES:
        for node in ast.walk(ast.parse((PROJECT / name).read_text())):
            if not isinstance(node, ast.ImportFrom) or not node.module:
                continue
            if node.module.split(".")[0] not in ("common", "containers"):
                continue
            module = node.module.replace(".", "/")
            assert f"{module}.py" in listed or f"{module}/__init__.py" in listed, f"{name} imports {node.module}"
            for alias in node.names:  # ``from package import module``
                if (PROJECT / f"{module}/{alias.name}.py").exists():
                    assert f"{module}/{alias.name}.py" in listed, f"{name} imports {node.module}.{alias.name}"
