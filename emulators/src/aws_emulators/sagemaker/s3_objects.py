"""S3 addresses (``s3://bucket/key``) and the object moves of SageMaker's jobs: a prefix copied into a container's
folder, a folder copied back under a prefix."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")


class S3UriError(ValueError):
    """An S3 address that cannot be used."""


@dataclass(frozen=True)
class S3Uri:
    bucket: str
    key: str = ""

    @classmethod
    def parse(cls, uri: str) -> S3Uri:
        if not isinstance(uri, str) or not uri.startswith("s3://"):
            raise S3UriError(f"not an S3 URI (must start with s3://): {uri!r}")
        bucket, _, key = uri[len("s3://") :].partition("/")
        if not _BUCKET.match(bucket):
            raise S3UriError(f"invalid bucket name in S3 URI {uri!r}")
        return cls(bucket, key)

    def join(self, *parts: str) -> S3Uri:
        key = "/".join(p.strip("/") for p in (self.key, *parts) if p.strip("/"))
        return S3Uri(self.bucket, key)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def download_prefix(s3: Any, uri: S3Uri, destination: Path) -> list[Path]:
    """Copy every object under ``uri`` (a prefix or a single object) into ``destination``, keys made relative to
    the prefix; a key that would land outside ``destination`` is refused."""
    destination.mkdir(parents=True, exist_ok=True)
    root = destination.resolve()
    written: list[Path] = []
    prefix = uri.key
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=uri.bucket, Prefix=prefix):
        for listed in page.get("Contents", []):
            key: str = listed["Key"]
            if key.endswith("/"):
                continue
            if key == prefix:
                relative = Path(key).name
            elif prefix and not prefix.endswith("/") and not key.startswith(prefix + "/"):
                continue  # "data" must not match "data-other/…"
            else:
                relative = key[len(prefix) :].lstrip("/")
            target = (root / relative).resolve()
            if not target.is_relative_to(root):
                raise S3UriError(f"object key {key!r} escapes its prefix")
            target.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(uri.bucket, key, str(target))
            written.append(target)
    return written


def upload_directory(s3: Any, source: Path, uri: S3Uri) -> list[str]:
    """Upload every file under ``source`` below the prefix ``uri``; returns the keys written."""
    keys: list[str] = []
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        key = uri.join(path.relative_to(source).as_posix()).key
        s3.upload_file(str(path), uri.bucket, key)
        keys.append(key)
    return keys
