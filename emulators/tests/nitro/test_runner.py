"""The local enclave runner: the image's own entry point runs as a process with only the environment it is given,
and the NSM it reaches answers with the image's measurement."""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

import pytest

from aws_emulators.nitro.authority import AttestationAuthority
from aws_emulators.nitro.measurement import image_sha384
from aws_emulators.nitro.runner import EnclaveRunner

# An image's entry point: it asks its NSM for PCR0, writes what it got and which variables it saw, then says ready.
ENTRY = """
import json, os, socket, struct, sys
import cbor2
with socket.socket(socket.AF_UNIX) as s:
    s.connect(os.environ["NSM"])
    body = cbor2.dumps({"DescribePCR": {"index": 0}})
    s.sendall(struct.pack(">I", len(body)) + body)
    size = struct.unpack(">I", s.recv(4))[0]
    answer = cbor2.loads(s.recv(size))
with open("seen.json", "w") as out:
    json.dump({"pcr0": answer["DescribePCR"]["data"].hex(), "variables": sorted(os.environ)}, out)
open(sys.argv[1], "w").close()
"""


def _image(path: Path, entry: str) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("__main__.py", entry)
    return path


def test_the_image_runs_with_only_its_environment_and_its_nsm_attests_the_images_measurement(
    tmp_path: Path, attestation_authority: AttestationAuthority
) -> None:
    image = _image(tmp_path / "enclave.pyz", ENTRY)
    runner = EnclaveRunner(image, tmp_path / "run", attestation_authority)
    ready = runner.folder / "ready"
    try:
        runner.start([sys.executable, str(image), str(ready)], {"NSM": str(runner.nsm_socket)}, ready=ready)
    finally:
        runner.stop()
    seen = (runner.folder / "seen.json").read_text()
    assert image_sha384(image) in seen and runner.image_sha384 == image_sha384(image)
    assert '"variables": ["LC_CTYPE", "NSM"]' in seen or '"variables": ["NSM"]' in seen


def test_an_image_that_does_not_start_is_reported_with_its_log(
    tmp_path: Path, attestation_authority: AttestationAuthority
) -> None:
    image = _image(tmp_path / "broken.pyz", "raise SystemExit('the enclave application failed at start')")
    runner = EnclaveRunner(image, tmp_path / "run", attestation_authority)
    with pytest.raises(RuntimeError, match="failed at start"):
        runner.start([sys.executable, str(image)], {}, ready=runner.folder / "never")
