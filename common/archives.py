"""Safe extraction of the archives that travel between roles (``model.tar.gz``, ``client.zip``).

A member that is absolute, climbs out with ``..``, is a link, or is a device file is refused.
"""

from __future__ import annotations

import tarfile
import zipfile
from pathlib import Path, PurePosixPath


class UnsafeArchiveError(ValueError):
    """An archive member would be written outside the destination folder, or is not a plain file."""


def _check_member_name(name: str, archive: Path) -> None:
    path = PurePosixPath(name)
    drive_like = bool(path.parts) and ":" in path.parts[0]
    if path.is_absolute() or ".." in path.parts or name.startswith("\\") or drive_like:
        raise UnsafeArchiveError(f"{archive.name}: member {name!r} would escape the destination")


def extract_tar(archive: Path, destination: Path) -> list[Path]:
    destination.mkdir(parents=True, exist_ok=True)
    written = []
    with tarfile.open(archive, "r:*") as tar:
        members = tar.getmembers()
        for member in members:
            _check_member_name(member.name, archive)
            if not (member.isfile() or member.isdir()):
                raise UnsafeArchiveError(f"{archive.name}: member {member.name!r} is not a plain file")
        if hasattr(tarfile, "data_filter"):
            # The "data" filter re-checks the same rules inside the standard library.
            tar.extractall(destination, members=members, filter="data")
        else:
            # Pythons before 3.11.4 (Debian 12's 3.11.2, in the registry-free base image) have no filters:
            # the checks above hold alone.
            tar.extractall(destination, members=members)  # noqa: S202 - every member was checked above
        written = [destination / m.name for m in members if m.isfile()]
    return written


def extract_zip(archive: Path, destination: Path) -> list[Path]:
    destination.mkdir(parents=True, exist_ok=True)
    root = destination.resolve()
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            _check_member_name(info.filename, archive)
            target = (root / info.filename).resolve()
            if not target.is_relative_to(root):
                raise UnsafeArchiveError(f"{archive.name}: member {info.filename!r} escapes the destination")
            # The top 4 bits of external_attr hold the Unix file type; 0o12 is a symbolic link.
            if (info.external_attr >> 28) == 0o12:
                raise UnsafeArchiveError(f"{archive.name}: member {info.filename!r} is a link")
        zf.extractall(root)  # noqa: S202 - every member was checked above
        return [root / i.filename for i in zf.infolist() if not i.is_dir()]
