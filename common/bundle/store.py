"""Where bundles live in S3 and the moves every role makes with them. Everything a batch owner writes or reads
lies under its own folder (``<owner>``), so one role per owner can be granted exactly its own:

    s3://<bucket>/inbox/<owner>/keys/<sha256>.ekey              the owner's evaluation keys, by content, uploaded once
    s3://<bucket>/inbox/<owner>/<bundle id>/shards/00000.fhe    request shards, then
    s3://<bucket>/inbox/<owner>/<bundle id>/estimate.json       the owner's estimate of its time and cost, if made
    s3://<bucket>/inbox/<owner>/<bundle id>/manifest.json       the request manifest, written last: the commit point
    s3://<bucket>/outbox/<owner>/<bundle id>/shards/00000.out   result shards (written by the endpoint), then
    s3://<bucket>/outbox/<owner>/<bundle id>/manifest.json      the result manifest, written last
    s3://<bucket>/quarantine/<owner>/<bundle id>/reason.json    why a bundle could not be processed
    s3://<bucket>/requests/<owner>/<bundle id>/plan.json        the shard plan Validate writes: the Map's items
    s3://<bucket>/requests/<owner>/<bundle id>/00000.json       the workflow's shard request to the endpoint
    s3://<bucket>/requests/<owner>/<bundle id>/results/00000.json  the endpoint's answer for a shard (for Assemble)
    s3://<bucket>/responses/<endpoint>/…                        the asynchronous endpoint's own responses and failures

A batch owner writes under inbox/<owner>/ only (its evaluation keys too) and reads outbox/<owner>/ and its own
quarantine records: its role (infrastructure/owner.yaml, made by ``fhe-deploy owner add``) grants exactly that.
Bundle ids are the owner's to choose, so two owners may use the same one: every place is under the owner too.

No concrete import here: the Lambdas, the client and the container all use it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from common.aws import is_missing
from common.bundle.manifest import Manifest, ShardEntry, parse_manifest, shard_key
from common.bundle.messages import ShardRequest, ShardResult, parse_shard_result
from common.bundle.schema import (
    MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
    MAX_MESSAGE_BYTES,
    BundleError,
    check_owner,
    check_relative_key,
    sha256_hex,
    utc_now,
)
from common.bundle.shards import check_object
from common.s3uri import S3Uri

INBOX_PREFIX = "inbox"
KEYS_FOLDER = "keys"  # under inbox/<owner>/; "keys" is no bundle id (common/bundle/schema.py)
RESPONSES_PREFIX = "responses"
OUTBOX_PREFIX = "outbox"
QUARANTINE_PREFIX = "quarantine"
REQUESTS_PREFIX = "requests"
# A batch owner's objects: <top>/<owner>/ under each; fhe-deploy owner remove --erase empties them all.
OWNER_FOLDERS = (INBOX_PREFIX, OUTBOX_PREFIX, QUARANTINE_PREFIX, REQUESTS_PREFIX)
EXPORTED_FOLDERS = (OUTBOX_PREFIX, QUARANTINE_PREFIX)  # an owner's export: its results and its quarantine records
REASON_NAME = "reason.json"
USAGE_NAME = "usage.json"  # beside a result manifest: how long the instances worked on the bundle (Assemble)
PLAN_NAME = "plan.json"
SHARD_RESULTS_FOLDER = "results"
EVALUATION_KEY_SUFFIX = ".ekey"
# Beside a request manifest: the owner's estimate before paying (common/estimate.py, shown by the audit report).
ESTIMATE_NAME = "estimate.json"


@dataclass(frozen=True)
class BundleLayout:
    """The places of one batch owner's bundles in the bundle bucket."""

    bucket: str
    owner: str

    def __post_init__(self) -> None:
        check_owner(self.owner)

    def _under(self, top: str, *parts: str) -> S3Uri:
        return S3Uri(self.bucket, "/".join((top, self.owner, *parts)))

    def folder(self, top: str) -> S3Uri:
        """The owner's folder under ``top`` (OWNER_FOLDERS); listed with a trailing slash, as no other owner's."""
        return self._under(top)

    @property
    def keys_prefix(self) -> S3Uri:
        return self._under(INBOX_PREFIX, KEYS_FOLDER)

    def evaluation_key(self, sha256: str) -> S3Uri:
        return self.keys_prefix.join(f"{sha256}{EVALUATION_KEY_SUFFIX}")

    def request_prefix(self, bundle_id: str) -> S3Uri:
        return self._under(INBOX_PREFIX, bundle_id)

    def result_prefix(self, bundle_id: str) -> S3Uri:
        return self._under(OUTBOX_PREFIX, bundle_id)

    def quarantine_reason(self, bundle_id: str) -> S3Uri:
        return self._under(QUARANTINE_PREFIX, bundle_id, REASON_NAME)

    def estimate(self, bundle_id: str) -> S3Uri:
        return self.request_prefix(bundle_id).join(ESTIMATE_NAME)

    def request_manifest(self, bundle_id: str) -> S3Uri:
        return self.request_prefix(bundle_id).join(MANIFEST_NAME)

    def usage_record(self, bundle_id: str) -> S3Uri:
        return self._under(OUTBOX_PREFIX, bundle_id, USAGE_NAME)

    def result_manifest(self, bundle_id: str) -> S3Uri:
        return self.result_prefix(bundle_id).join(MANIFEST_NAME)

    def shard_request_object(self, bundle_id: str, index: int) -> S3Uri:
        # One fixed key per shard: a retried shard sends the same request, and results overwrite in place.
        return self._under(REQUESTS_PREFIX, bundle_id, f"{index:05d}.json")

    def shard_plan(self, bundle_id: str) -> S3Uri:
        return self._under(REQUESTS_PREFIX, bundle_id, PLAN_NAME)

    def shard_results_prefix(self, bundle_id: str) -> S3Uri:
        return self._under(REQUESTS_PREFIX, bundle_id, SHARD_RESULTS_FOLDER)

    def shard_result_record(self, bundle_id: str, index: int) -> S3Uri:
        # Deterministic, like the request: whatever attempt answered, the record of shard i is here.
        return self.shard_results_prefix(bundle_id).join(f"{index:05d}.json")

    def shard_request(self, bundle_id: str, index: int) -> ShardRequest:
        """What the endpoint is asked for shard ``index``: read it from the inbox, write its result to the outbox."""
        result_uri = self.result_prefix(bundle_id).join(shard_key(index, "results"))
        return ShardRequest(str(self.request_manifest(bundle_id)), index, str(result_uri))


def bundle_prefix(manifest_uri: S3Uri) -> S3Uri:
    """The prefix a manifest's relative shard keys hang from."""
    if not manifest_uri.key.endswith("/" + MANIFEST_NAME):
        raise BundleError("manifest_uri", f"{manifest_uri} does not end in /{MANIFEST_NAME}")
    return S3Uri(manifest_uri.bucket, manifest_uri.key[: -len(MANIFEST_NAME) - 1])


def object_exists(s3: Any, uri: S3Uri) -> bool:
    """Whether the object exists, asked by listing its key: a role allowed to list a prefix but not to read what
    is under it (a batch owner and its own evaluation key) gets an answer instead of AccessDenied."""
    listed = s3.list_objects_v2(Bucket=uri.bucket, Prefix=uri.key, MaxKeys=1).get("Contents", [])
    return bool(listed) and listed[0]["Key"] == uri.key


def last_modified(s3: Any, uri: S3Uri) -> datetime | None:
    """When the object was last written, asked by listing its key (as :func:`object_exists`); None if it is not
    there."""
    listed = s3.list_objects_v2(Bucket=uri.bucket, Prefix=uri.key, MaxKeys=1).get("Contents", [])
    if not listed or listed[0]["Key"] != uri.key:
        return None
    modified: datetime = listed[0]["LastModified"]
    return modified


def get_bytes(s3: Any, uri: S3Uri, *, field: str, limit: int) -> bytes:
    """Read one object of at most ``limit`` bytes; a missing or larger object is a BundleError naming ``field``.

    One GET: its length is checked before any byte is read, and no more than ``limit`` + 1 bytes are read
    whatever it says, so the bytes checked after (size, hash) are the very object's that is used; a HEAD first
    would check one object and read another if it was replaced between the two."""
    try:
        response = s3.get_object(Bucket=uri.bucket, Key=uri.key)
    except s3.exceptions.ClientError as error:
        if is_missing(error):
            raise BundleError(field, f"{uri} does not exist", "missing_object") from None
        raise
    stream = response["Body"]
    try:
        length = int(response.get("ContentLength", 0))
        if length > limit:
            raise BundleError(field, f"{uri} is {length} bytes, more than {limit}", "too_large")
        body: bytes = stream.read(limit + 1)
    finally:
        stream.close()
    if len(body) > limit:
        raise BundleError(field, f"{uri} is more than {limit} bytes", "too_large")
    return body


def listed_objects(s3: Any, prefix: S3Uri) -> Iterator[dict[str, Any]]:
    """Every object under ``prefix`` (a folder: its key without the trailing slash), a page at a time."""
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=prefix.bucket, Prefix=prefix.key + "/")
    for page in pages:
        yield from page.get("Contents", [])


def write_shard_plan(s3: Any, layout: BundleLayout, bundle_id: str, indices: Sequence[int]) -> S3Uri:
    """The Distributed Map's items: one ``{"shard_index": i}`` per shard, a JSON array the ItemReader reads."""
    uri = layout.shard_plan(bundle_id)
    body = json.dumps([{"shard_index": index} for index in indices], separators=(",", ":")).encode()
    s3.put_object(Bucket=uri.bucket, Key=uri.key, Body=body, ContentType="application/json")
    return uri


def write_shard_result(s3: Any, layout: BundleLayout, result: ShardResult) -> S3Uri:
    uri = layout.shard_result_record(result.bundle_id, result.shard_index)
    s3.put_object(Bucket=uri.bucket, Key=uri.key, Body=result.to_json(), ContentType="application/json")
    return uri


def read_shard_results(
    s3: Any, layout: BundleLayout, bundle_id: str, indices: Collection[int], workers: int = 16
) -> list[ShardResult]:
    """The shard results recorded for ``bundle_id``'s shards ``indices``: the folder listed page by page, the
    records read in parallel (a bundle may have thousands). A record of another index is left alone: an
    earlier drop of the same bundle id with more shards left it, and this run has written every one it needs."""
    wanted = {layout.shard_result_record(bundle_id, index).key for index in indices}
    keys = [obj["Key"] for obj in listed_objects(s3, layout.shard_results_prefix(bundle_id)) if obj["Key"] in wanted]

    def read(key: str) -> ShardResult:
        field = f"results[{key.rsplit('/', 1)[-1].removesuffix('.json')}]"
        return parse_shard_result(get_bytes(s3, S3Uri(layout.bucket, key), field=field, limit=MAX_MESSAGE_BYTES))

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(read, keys))


def read_manifest(s3: Any, uri: S3Uri, *, field: str = "manifest") -> tuple[Manifest, str]:
    """The validated manifest at ``uri`` and the sha256 of its bytes."""
    data = get_bytes(s3, uri, field=field, limit=MAX_MANIFEST_BYTES)
    return parse_manifest(data), sha256_hex(data)


def read_shard(s3: Any, manifest_uri: S3Uri, entry: ShardEntry) -> bytes:
    """A shard's bytes, checked against the size and sha256 the manifest recorded."""
    field = f"shards[{entry.index}]"
    uri = bundle_prefix(manifest_uri).join(check_relative_key(entry.key, f"{field}.key"))
    data = get_bytes(s3, uri, field=field, limit=entry.size)
    check_object(data, size=entry.size, sha256=entry.sha256, field=field)
    return data


def read_evaluation_key(s3: Any, manifest: Manifest) -> bytes:
    data = get_bytes(
        s3, S3Uri.parse(manifest.evaluation_key.uri), field="evaluation_key", limit=manifest.evaluation_key.size
    )
    check_object(data, size=manifest.evaluation_key.size, sha256=manifest.evaluation_key.sha256, field="evaluation_key")
    return data


def put_bundle(
    s3: Any,
    prefix: S3Uri,
    manifest: EitherPathManifest,
    shard_bytes: Callable[[ShardEntry], bytes],
    progress: Callable[[int], None] | None = None,
) -> S3Uri:
    """Upload the shards, then the manifest: a manifest in S3 means the whole bundle is there."""
    for entry in manifest.shards:
        data = shard_bytes(entry)
        check_object(data, size=entry.size, sha256=entry.sha256, field=f"shards[{entry.index}]")
        s3.put_object(Bucket=prefix.bucket, Key=prefix.join(entry.key).key, Body=data)
        if progress:
            progress(len(data))
    manifest_uri = prefix.join(MANIFEST_NAME)
    s3.put_object(
        Bucket=manifest_uri.bucket, Key=manifest_uri.key, Body=manifest.to_json(), ContentType="application/json"
    )
    return manifest_uri


def result_entries(
    request_shards: Sequence[ShardEntry], bundle_id: str, result_prefix: S3Uri, results: Sequence[ShardResult]
) -> tuple[ShardEntry, ...]:
    """The result bundle's shards answering the request's: one result object per request shard, same samples, each
    under the result bundle's prefix (whichever path served it)."""
    by_index: dict[int, ShardResult] = {}
    for result in results:
        field = f"results[{result.shard_index}]"
        if result.bundle_id != bundle_id:
            raise BundleError(field, f"answers bundle {result.bundle_id}, not {bundle_id}")
        if result.shard_index in by_index:
            raise BundleError(field, "appears twice")
        by_index[result.shard_index] = result
    shards = []
    for entry in request_shards:
        field = f"results[{entry.index}]"
        if entry.index not in by_index:
            raise BundleError(field, "is missing: every request shard needs its result", "missing_result")
        result = by_index[entry.index]
        if result.samples != entry.samples:
            raise BundleError(field, f"holds {result.samples} samples, the request shard {entry.samples}")
        uri = S3Uri.parse(result.result_uri)
        if uri.bucket != result_prefix.bucket or not uri.key.startswith(result_prefix.key + "/"):
            raise BundleError(f"{field}.result_uri", f"{uri} is not under {result_prefix}", "escapes_prefix")
        key = check_relative_key(uri.key[len(result_prefix.key) + 1 :], f"{field}.result_uri")
        shards.append(ShardEntry(entry.index, key, result.samples, result.sha256, result.size))
    if len(by_index) != len(request_shards):
        raise BundleError("results", f"{len(by_index)} results for {len(request_shards)} shards")
    return tuple(shards)


def result_manifest(
    request: Manifest, request_sha256: str, result_prefix: S3Uri, results: Sequence[ShardResult]
) -> Manifest:
    """The result manifest answering ``request``: one result shard per request shard, same samples."""
    return Manifest(
        kind="result",
        bundle_id=request.bundle_id,
        created_at=utc_now(),
        model=request.model,
        versions=dict(request.versions),
        evaluation_key=request.evaluation_key,
        shards=result_entries(request.shards, request.bundle_id, result_prefix, results),
        request_manifest_sha256=request_sha256,
    )


@dataclass(frozen=True)
class WrittenRecord:
    """A record object the workflow wrote, with the sha256 of its bytes (what the audit log keeps of it)."""

    uri: S3Uri
    sha256: str


def put_record(s3: Any, uri: S3Uri, body: bytes) -> WrittenRecord:
    s3.put_object(Bucket=uri.bucket, Key=uri.key, Body=body, ContentType="application/json")
    return WrittenRecord(uri, hashlib.sha256(body).hexdigest())


class EitherPathManifest(Protocol):
    """A manifest of either path (``Manifest``, ``enclave_manifest.EnclaveManifest``)."""

    @property
    def bundle_id(self) -> str: ...

    @property
    def shards(self) -> tuple[ShardEntry, ...]: ...

    def to_json(self) -> bytes: ...


def write_result_manifest(s3: Any, layout: BundleLayout, manifest: EitherPathManifest) -> WrittenRecord:
    """Write the result manifest after checking that every result shard it lists is in place."""
    prefix = layout.result_prefix(manifest.bundle_id)
    for entry in manifest.shards:
        head = s3.head_object(Bucket=prefix.bucket, Key=prefix.join(entry.key).key)
        if head["ContentLength"] != entry.size:
            raise BundleError(
                f"shards[{entry.index}]", f"result object is {head['ContentLength']} bytes, not {entry.size}"
            )
    return put_record(s3, layout.result_manifest(manifest.bundle_id), manifest.to_json())


def write_quarantine_reason(s3: Any, layout: BundleLayout, bundle_id: str, reason: dict[str, Any]) -> WrittenRecord:
    record = {"owner": layout.owner, "bundle_id": bundle_id, "quarantined_at": utc_now(), **reason}
    body = json.dumps(record, indent=2, sort_keys=True)
    return put_record(s3, layout.quarantine_reason(bundle_id), body.encode())
