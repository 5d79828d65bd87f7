"""The NSM emulator and the attestation document's verifier: a document the NSM signs for an image verifies against
the root and carries that image's measurements and the requester's key, data and nonce; each kind of forgery or
replay is refused with its reason; the NSM refuses requests the NSM API refuses."""

from __future__ import annotations

import datetime
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from aws_emulators.nitro.attestation import (
    AttestationRefused,
    parse_document,
    sign_document,
    verify_document,
)
from aws_emulators.nitro.authority import AttestationAuthority
from aws_emulators.nitro.measurement import image_sha384, measure_image
from aws_emulators.nitro.nsm import REQUEST_LIMIT, Nsm, NsmServer, nsm_for_image, read_message, write_message

NOW = datetime.datetime.now(tz=datetime.UTC)


def _public_key() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "enclave.img"
    path.write_bytes(b"the enclave application, built reproducibly" * 100)
    return path


@pytest.fixture
def nsm(image: Path, attestation_authority: AttestationAuthority) -> Nsm:
    return nsm_for_image(image, attestation_authority)


def _attest(nsm: Nsm, **fields: Any) -> bytes:
    answer = nsm.answer({"Attestation": {"user_data": None, "nonce": None, "public_key": None, **fields}})
    return bytes(answer["Attestation"]["document"])


def test_a_document_verifies_and_carries_the_images_measurement_and_the_requesters_fields(
    nsm: Nsm, image: Path, attestation_authority: AttestationAuthority
) -> None:
    key, digest, nonce = _public_key(), b"model sha256 " + bytes(32), b"n" * 32
    document = verify_document(
        _attest(nsm, public_key=key, user_data=digest, nonce=nonce),
        attestation_authority.root,
        max_age=datetime.timedelta(minutes=5),
        nonce=nonce,
        public_key=key,
    )
    assert document.pcrs[0].hex() == image_sha384(image)
    assert document.pcrs == measure_image(image)
    assert (document.public_key, document.user_data, document.nonce) == (key, digest, nonce)
    assert document.module_id == nsm.module_id and document.digest == "SHA384"
    assert abs(document.issued_at - datetime.datetime.now(tz=datetime.UTC)) < datetime.timedelta(seconds=10)


def test_an_image_changed_by_one_byte_has_another_measurement(image: Path, tmp_path: Path) -> None:
    changed = tmp_path / "changed.img"
    content = bytearray(image.read_bytes())
    content[len(content) // 2] ^= 1
    changed.write_bytes(bytes(content))
    assert image_sha384(changed) != image_sha384(image)
    assert measure_image(changed)[1] == measure_image(image)[1]  # the boot is the same


def test_a_document_signed_under_another_root_is_refused(
    image: Path, tmp_path: Path, attestation_authority: AttestationAuthority
) -> None:
    other = nsm_for_image(image, AttestationAuthority.ensure(tmp_path / "other-root"))
    with pytest.raises(AttestationRefused) as refused:
        verify_document(_attest(other, public_key=_public_key()), attestation_authority.root)
    assert refused.value.reason == "untrusted_root"


def test_a_chain_that_names_the_root_but_was_not_issued_by_it_is_refused(
    nsm: Nsm, tmp_path: Path, attestation_authority: AttestationAuthority
) -> None:
    """Another authority's signer with the trusted root put first in its bundle: the chain check catches it."""
    impostor = AttestationAuthority.ensure(tmp_path / "impostor").issue_signer(nsm.module_id)
    forged = Nsm(nsm.pcrs, type(impostor)(impostor.key, impostor.certificate, nsm.signer.cabundle), nsm.module_id)
    with pytest.raises(AttestationRefused) as refused:
        verify_document(_attest(forged, public_key=_public_key()), attestation_authority.root)
    assert refused.value.reason == "chain"


def test_a_document_whose_content_was_changed_after_signing_is_refused(
    nsm: Nsm, tmp_path: Path, attestation_authority: AttestationAuthority
) -> None:
    """The parent swaps the measurement (or the key) in a genuine document: the signature no longer verifies."""
    structure = cbor2.loads(_attest(nsm, public_key=_public_key()))
    payload = cbor2.loads(structure[2])
    payload["pcrs"][0] = bytes(48)
    structure[2] = cbor2.dumps(payload)
    with pytest.raises(AttestationRefused) as refused:
        verify_document(cbor2.dumps(structure), attestation_authority.root)
    assert refused.value.reason == "signature"


def test_a_replayed_document_is_refused_once_it_is_older_than_the_relying_partys_window(
    nsm: Nsm, attestation_authority: AttestationAuthority
) -> None:
    document = _attest(nsm, public_key=_public_key())
    later = datetime.datetime.now(tz=datetime.UTC) + datetime.timedelta(minutes=6)
    with pytest.raises(AttestationRefused) as refused:
        verify_document(document, attestation_authority.root, now=later, max_age=datetime.timedelta(minutes=5))
    assert refused.value.reason == "stale"


def test_a_document_for_another_nonce_or_another_public_key_is_refused(
    nsm: Nsm, attestation_authority: AttestationAuthority
) -> None:
    key = _public_key()
    document = _attest(nsm, public_key=key, nonce=b"challenge one")
    with pytest.raises(AttestationRefused) as refused:
        verify_document(document, attestation_authority.root, nonce=b"challenge two")
    assert refused.value.reason == "nonce"
    with pytest.raises(AttestationRefused) as refused:
        verify_document(document, attestation_authority.root, public_key=_public_key())
    assert refused.value.reason == "public_key"


@pytest.mark.parametrize(
    "damage",
    [
        lambda document: b"",
        lambda document: b"\xff" * 40,
        lambda document: cbor2.dumps([1, 2, 3]),
        lambda document: document[:-10],
        lambda document: cbor2.dumps({"not": "a COSE structure"}),
        lambda document: b"\x00" * (20 * 1024),
    ],
    ids=["empty", "not-cbor", "short-array", "truncated", "a-map", "oversized"],
)
def test_bytes_that_are_not_a_document_are_refused_as_malformed(
    damage: Any, nsm: Nsm, attestation_authority: AttestationAuthority
) -> None:
    with pytest.raises(AttestationRefused) as refused:
        verify_document(damage(_attest(nsm, public_key=_public_key())), attestation_authority.root)
    assert refused.value.reason == "malformed"


def test_a_payload_with_a_field_out_of_its_limits_is_refused_as_malformed(
    nsm: Nsm, attestation_authority: AttestationAuthority
) -> None:
    """Signed by a genuine NSM key, but with a user_data over 512 bytes: the verifier checks sizes itself."""
    document = nsm.content(user_data=b"u" * 513)
    with pytest.raises(AttestationRefused) as refused:
        parse_document(sign_document(document, nsm.signer.key))
    assert refused.value.reason == "malformed" and "user_data" in refused.value.detail


@pytest.mark.parametrize(
    ("request_", "error"),
    [
        ({"Attestation": {"public_key": b"k" * 1025}}, "InputTooLarge"),
        ({"Attestation": {"user_data": b"u" * 513}}, "InputTooLarge"),
        ({"Attestation": {"nonce": "text, not bytes"}}, "InvalidArgument"),
        ({"DescribePCR": {"index": 99}}, "InvalidIndex"),
        ({"ExtendPCR": {"index": 16, "data": b"x"}}, "InvalidOperation"),
        ("Shutdown", "InvalidOperation"),
    ],
)
def test_the_nsm_refuses_what_the_nsm_api_refuses(nsm: Nsm, request_: Any, error: str) -> None:
    assert nsm.answer(request_) == {"Error": error}


@pytest.fixture
def nsm_socket(nsm: Nsm, tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "nsm.sock"
    server = NsmServer(path, nsm)
    server.start()
    yield path
    server.shutdown()
    server.server_close()


def _call(path: Path, request: Any) -> Any:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stream:
        stream.connect(str(path))
        write_message(stream, cbor2.dumps(request))
        return cbor2.loads(read_message(stream, 64 * 1024) or b"")


def test_over_its_socket_the_nsm_answers_each_request_with_the_images_registers(
    nsm_socket: Path, nsm: Nsm, attestation_authority: AttestationAuthority
) -> None:
    assert nsm_socket.stat().st_mode & 0o077 == 0  # the enclave's process only
    assert _call(nsm_socket, {"DescribePCR": {"index": 0}}) == {"DescribePCR": {"lock": True, "data": nsm.pcrs[0]}}
    assert len(_call(nsm_socket, "GetRandom")["GetRandom"]["random"]) == 256
    key = _public_key()
    answer = _call(nsm_socket, {"Attestation": {"public_key": key, "user_data": None, "nonce": None}})
    document = verify_document(answer["Attestation"]["document"], attestation_authority.root, public_key=key)
    assert document.pcrs[0] == nsm.pcrs[0]
    assert _call(nsm_socket, b"\xff\xff") == {"Error": "InvalidOperation"}


def test_the_nsm_drops_a_connection_that_announces_an_oversized_request(nsm_socket: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stream:
        stream.connect(str(nsm_socket))
        stream.sendall((REQUEST_LIMIT + 1).to_bytes(4, "big"))
        stream.settimeout(5)
        assert stream.recv(1) == b""
