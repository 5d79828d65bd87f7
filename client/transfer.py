"""Moving bundles: submit (shards first, manifest last), wait for the result or the quarantine record,
download a result bundle."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from client.errors import BundleQuarantined, FheClientError, WaitTimeout
from common.bundle.enclave_manifest import EnclaveManifest, parse_enclave_manifest
from common.bundle.manifest import Manifest, parse_manifest
from common.bundle.schema import MANIFEST_NAME, MAX_MANIFEST_BYTES, BundleError, check_relative_key
from common.bundle.store import (
    ESTIMATE_NAME,
    BundleLayout,
    get_bytes,
    last_modified,
    object_exists,
    put_bundle,
    read_manifest,
    read_shard,
)
from common.s3uri import S3Uri


def parse_either_manifest(data: bytes) -> Manifest | EnclaveManifest:
    """A manifest of the FHE path, or of the enclave path (its ``enclave`` section)."""
    try:
        return parse_manifest(data)
    except BundleError as error:
        if error.code != "wrong_path":
            raise
    return parse_enclave_manifest(data)


def load_local_bundle(folder: Path) -> Manifest | EnclaveManifest:
    try:
        return parse_either_manifest((folder / MANIFEST_NAME).read_bytes())
    except FileNotFoundError:
        raise FheClientError(f"{folder} holds no {MANIFEST_NAME}; make one with `fhe-client encrypt`") from None


def submit(s3: Any, layout: BundleLayout, folder: Path, *, progress: bool = True) -> S3Uri:
    """Upload a local bundle under ``inbox/<owner>/<bundle id>/``; the manifest goes last and commits it."""
    manifest = load_local_bundle(folder)
    if isinstance(manifest, Manifest):  # an enclave bundle carries its data key in its manifest
        _check_evaluation_key(s3, layout, manifest)
    prefix = layout.request_prefix(manifest.bundle_id)
    if object_exists(s3, prefix.join(MANIFEST_NAME)):
        raise FheClientError(f"bundle {manifest.bundle_id} was already submitted ({prefix.join(MANIFEST_NAME)})")
    total = sum(entry.size for entry in manifest.shards)
    estimate = folder / ESTIMATE_NAME
    if estimate.is_file():  # sizes and seconds only, for the audit: nothing of the rows
        uri = layout.estimate(manifest.bundle_id)
        s3.put_object(Bucket=uri.bucket, Key=uri.key, Body=estimate.read_bytes(), ContentType="application/json")
    with tqdm(total=total, unit="B", unit_scale=True, desc="upload", disable=not progress) as bar:
        return put_bundle(
            s3,
            prefix,
            manifest,
            lambda entry: (folder / check_relative_key(entry.key, f"shards[{entry.index}].key")).read_bytes(),
            bar.update,
        )


def _check_evaluation_key(s3: Any, layout: BundleLayout, manifest: Manifest) -> None:
    key = S3Uri.parse(manifest.evaluation_key.uri)
    if key.bucket != layout.bucket or not key.key.startswith(layout.keys_prefix.key + "/"):
        raise FheClientError(
            f"bundle {manifest.bundle_id} names the evaluation key {key}, which is not owner {layout.owner}'s "
            f"(under {layout.keys_prefix}/): run `fhe-client keys --owner {layout.owner}`, then encrypt again"
        )
    if not object_exists(s3, S3Uri.parse(manifest.evaluation_key.uri)):
        raise FheClientError(f"the evaluation key {manifest.evaluation_key.uri} is not in S3; run `fhe-client keys`")


def wait(s3: Any, layout: BundleLayout, bundle_id: str, *, timeout: float, progress: bool = True) -> S3Uri:
    """Until the result manifest or a quarantine record of the bundle as last dropped appears; returns the result
    manifest's URI. A record older than the manifest dropped is an earlier drop's and does not count; when both are
    there, the newer one is the answer (a manifest dropped again under a delivered id is refused by a record newer
    than the result)."""
    result = layout.result_manifest(bundle_id)
    quarantine = layout.quarantine_reason(bundle_id)
    started = time.monotonic()
    deadline = started + timeout
    with tqdm(desc=f"waiting for {bundle_id}", unit="s", disable=not progress, bar_format="{desc}: {elapsed}") as bar:
        while True:
            dropped = last_modified(s3, layout.request_manifest(bundle_id))
            delivered, refused = last_modified(s3, result), last_modified(s3, quarantine)
            if (
                refused is not None
                and (dropped is None or refused >= dropped)  # not an earlier drop's
                and (delivered is None or refused >= delivered)
            ):
                reason = json.loads(get_bytes(s3, quarantine, field="quarantine", limit=1024 * 1024))
                raise BundleQuarantined(bundle_id, reason)
            if delivered is not None and (dropped is None or delivered >= dropped):
                return result
            # Looked for again after a fifth of the time waited so far (1 to 10 s): a result is seen at most 20%
            # late, and a long bundle costs a listing every 10 s.
            delay = min(10.0, max(1.0, 0.2 * (time.monotonic() - started)))
            if time.monotonic() + delay > deadline:
                raise WaitTimeout(f"no result for bundle {bundle_id} after {timeout:.0f} s (looked for {result})")
            time.sleep(delay)
            bar.update(0)


def download_result(s3: Any, manifest_uri: S3Uri) -> tuple[Manifest, dict[int, bytes]]:
    """The result manifest and every result shard, each checked against its size and sha256."""
    manifest, _ = read_manifest(s3, manifest_uri)
    if manifest.kind != "result":
        raise FheClientError(f"{manifest_uri} is a {manifest.kind} manifest, not a result")
    return manifest, {entry.index: read_shard(s3, manifest_uri, entry) for entry in manifest.shards}


def read_either_manifest(s3: Any, manifest_uri: S3Uri) -> tuple[Manifest | EnclaveManifest, bytes]:
    """The manifest at ``manifest_uri``, of either path, and its bytes."""
    data = get_bytes(s3, manifest_uri, field="manifest", limit=MAX_MANIFEST_BYTES)
    return parse_either_manifest(data), data


def download_enclave_shards(s3: Any, manifest_uri: S3Uri, manifest: EnclaveManifest) -> dict[int, bytes]:
    """An enclave result's sealed shards, each checked against its size and sha256."""
    if manifest.kind != "result":
        raise FheClientError(f"{manifest_uri} is a {manifest.kind} manifest, not a result")
    return {entry.index: read_shard(s3, manifest_uri, entry) for entry in manifest.shards}
