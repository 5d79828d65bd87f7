from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from common.archives import UnsafeArchiveError, extract_tar, extract_zip
from common.s3uri import S3Uri, S3UriError
from common.versions import VersionMismatchError, VersionsRecord


def make_tar(path: Path, members: dict[str, bytes], link: str | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if link:
            info = tarfile.TarInfo("link")
            info.type = tarfile.SYMTYPE
            info.linkname = link
            tar.addfile(info)
    return path


@pytest.fixture(params=["with the stdlib's data filter", "on a Python without extraction filters"])
def tar_python(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both kinds of Python the images run: the official image's has filters, Debian 12's 3.11.2 has none."""
    if request.param.startswith("on a Python without"):
        monkeypatch.delattr(tarfile, "data_filter")


@pytest.mark.usefixtures("tar_python")
def test_tar_extracts_plain_members(tmp_path: Path) -> None:
    archive = make_tar(tmp_path / "m.tar.gz", {"client.zip": b"c", "sub/server.zip": b"s"})
    written = extract_tar(archive, tmp_path / "out")
    assert sorted(p.name for p in written) == ["client.zip", "server.zip"]
    assert (tmp_path / "out/sub/server.zip").read_bytes() == b"s"


@pytest.mark.usefixtures("tar_python")
@pytest.mark.parametrize("name", ["../evil", "/etc/evil", "a/../../evil"])
def test_tar_refuses_traversal(tmp_path: Path, name: str) -> None:
    archive = make_tar(tmp_path / "m.tar.gz", {name: b"x"})
    with pytest.raises(UnsafeArchiveError):
        extract_tar(archive, tmp_path / "out")
    assert not (tmp_path / "evil").exists()


@pytest.mark.usefixtures("tar_python")
def test_tar_refuses_links(tmp_path: Path) -> None:
    archive = make_tar(tmp_path / "m.tar.gz", {}, link="/etc/passwd")
    with pytest.raises(UnsafeArchiveError, match="not a plain file"):
        extract_tar(archive, tmp_path / "out")


def test_zip_refuses_traversal(tmp_path: Path) -> None:
    archive = tmp_path / "c.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("../evil", b"x")
    with pytest.raises(UnsafeArchiveError):
        extract_zip(archive, tmp_path / "out")
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ok/file", b"x")
    assert [p.name for p in extract_zip(archive, tmp_path / "out")] == ["file"]


def test_versions_check() -> None:
    here = VersionsRecord(python="3.11.7", concrete_python="2.10.0", concrete_ml="1.9.0")
    here.check_compatible(VersionsRecord("3.11.2", "2.10.0", "1.9.0"), what="the model")
    with pytest.raises(VersionMismatchError, match=r"concrete-python 2.9.0 \(here 2.10.0\)"):
        here.check_compatible(VersionsRecord("3.11.7", "2.9.0", "1.9.0"), what="the model")
    with pytest.raises(VersionMismatchError, match=r"Python 3\.10\.1"):
        here.check_compatible(VersionsRecord("3.10.1", "2.10.0", "1.9.0"), what="the model")
    with pytest.raises(VersionMismatchError, match="lacks the field"):
        VersionsRecord.from_dict({"python": "3.11"})


def test_s3_uri() -> None:
    uri = S3Uri.parse("s3://bucket-1/a/b")
    assert (uri.bucket, uri.key) == ("bucket-1", "a/b")
    assert str(uri.join("c", "/d/")) == "s3://bucket-1/a/b/c/d"
    for bad in ("http://x/y", "s3://UPPER/x", "bucket/key", "s3://"):
        with pytest.raises(S3UriError):
            S3Uri.parse(bad)
