"""A deployment's batch owners: one stack each (infrastructure/owner.yaml, named ``<prefix>-owner-<name>``) holding
the owner's role, which reaches ``inbox/<name>/``, ``outbox/<name>/``, its quarantine records and the client
artifacts, and nothing of any other owner. ``fhe-deploy owner add|remove|list`` is the command line; ``owner remove
--export DIR --erase`` (``offboard``) also copies the owner's results out and erases its data, for the audit log.

Adding or removing an owner needs the rights of whoever runs ``fhe-deploy up``; the owner's people then assume
the role (see the README, "Batch owners")."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import aws, stacks
from common.audit_log import OWNER_ERASED, OWNER_EVENT_SOURCE, OWNER_EXPORTED, REFUSED_EVENT, last_records
from common.bundle.schema import MAX_MESSAGE_BYTES, BundleError, check_owner, utc_now
from common.bundle.store import (
    EXPORTED_FOLDERS,
    INBOX_PREFIX,
    OWNER_FOLDERS,
    RESPONSES_PREFIX,
    BundleLayout,
    get_bytes,
    listed_objects,
    object_exists,
)
from common.s3uri import S3Uri
from common.stack_outputs import DeploymentNotFound, StackNames, describe_stack, read_outputs, stack_outputs
from common.workflow import bundle_of_key
from infrastructure.templates import OWNER, body
from pipelines.approval import announce

STACK_TIMEOUT_S = 600.0
_GONE = "DELETE_COMPLETE"


class OwnerError(ValueError):
    """An owner that cannot be added or removed as asked."""


def _checked(name: str) -> str:
    try:
        return check_owner(name)
    except BundleError as error:
        raise OwnerError(error.problem) from None


def owner_parameters(outputs: dict[str, str], prefix: str, name: str, trusted_principal: str = "") -> dict[str, str]:
    return {
        "Prefix": prefix,
        "Owner": name,
        "TrustedPrincipal": trusted_principal,
        "KeyArn": outputs["KeyArn"],
        "ModelBucketName": outputs["ModelBucketName"],
        "BundleBucketName": outputs["BundleBucketName"],
        "ModelPackageGroup": outputs["ModelPackageGroup"],
        "EndpointName": outputs["EndpointName"],
        # Data keys for its enclave bundles, where the deployment has the enclave path.
        "EnclaveKeyArn": outputs.get("EnclaveKeyArn", ""),
    }


def add(
    prefix: str, name: str, *, trusted_principal: str = "", report: Callable[[str], None] = print
) -> dict[str, str]:
    """Create (or update) owner ``name``'s role; returns its stack's outputs (``Owner``, ``OwnerRoleArn``)."""
    stack = StackNames(prefix).owner(_checked(name))
    parameters = owner_parameters(read_outputs(prefix), prefix, name, trusted_principal)
    return stacks.apply(stack, body(OWNER), parameters, timeout=STACK_TIMEOUT_S, report=report)


def remove(prefix: str, name: str, *, report: Callable[[str], None] = print) -> bool:
    """Delete owner ``name``'s role; False when there was none. Its objects stay in the bundle bucket (its
    bundles' lifecycle rules expire them) and nobody but the auditor can read them any more."""
    return stacks.delete(StackNames(prefix).owner(_checked(name)), timeout=STACK_TIMEOUT_S, report=report)


def owners(prefix: str) -> dict[str, str]:
    """Owner name → role ARN, for every owner of the deployment."""
    names = StackNames(prefix)
    pages = aws.client("cloudformation").get_paginator("list_stacks").paginate()
    found: dict[str, str] = {}
    for summary in (s for page in pages for s in page.get("StackSummaries", [])):
        if summary["StackStatus"] == _GONE or not summary["StackName"].startswith(names.owner_prefix):
            continue
        outputs = stack_outputs(summary["StackName"])
        if "OwnerRoleArn" in outputs:
            found[outputs["Owner"]] = outputs["OwnerRoleArn"]
    return dict(sorted(found.items()))


def owner_role_arn(prefix: str, name: str) -> str:
    stack = describe_stack(StackNames(prefix).owner(_checked(name)))
    outputs = {o["OutputKey"]: o["OutputValue"] for o in (stack or {}).get("Outputs", [])}
    if "OwnerRoleArn" not in outputs:
        raise DeploymentNotFound(f"deployment {prefix} has no owner {name}; run `fhe-deploy owner add {name}`")
    return str(outputs["OwnerRoleArn"])


def remove_all(prefix: str, report: Callable[[str], None]) -> list[str]:
    """Delete every owner's role (``fhe-deploy down``); returns the stacks deleted."""
    names = StackNames(prefix)
    return [names.owner(name) for name in owners(prefix) if remove(prefix, name, report=report)]


# ---- an owner leaving: its data exported and erased, each recorded in the audit log -----------------------------

INDEX_NAME = "index.json"
RECORD_WAIT_S = 120.0  # how long offboarding waits for the recorder to append its record
DELETE_BATCH = 1000  # S3 DeleteObjects' limit per call
RECENT_RECORDS = 1000  # the newest records searched for the one offboarding announced
POLL_S = 5.0


def offboard(
    prefix: str,
    name: str,
    *,
    export_to: Path | None = None,
    erase: bool = False,
    wait_seconds: float = 900.0,
    report: Callable[[str], None] = print,
) -> dict[str, Any]:
    """``fhe-deploy owner remove NAME [--export DIR] [--erase]``. The owner's role goes first (it can drop nothing
    more); with an export or an erasure, every bundle it dropped must then end (a result or a quarantine record:
    this waits up to ``wait_seconds``); the export copies its results and quarantine records to ``export_to`` with an
    index of their sha256; the erasure deletes every object version and delete marker under its folders and every
    endpoint response naming them. Each is announced for the audit log and waited for there: the recorder checks an
    export's counts against the bucket, and records an erasure only once the bucket shows the folders empty, so an
    erasure follows only an export already on record."""
    owner = _checked(name)
    if export_to is None and not erase:
        return {"owner": owner, "removed": remove(prefix, owner, report=report)}
    if export_to is not None and export_to.exists() and (not export_to.is_dir() or any(export_to.iterdir())):
        raise OwnerError(f"{export_to} is not an empty folder: an export overwrites nothing")
    outputs = read_outputs(prefix)
    layout = BundleLayout(outputs["BundleBucketName"], owner)
    done: dict[str, Any] = {"owner": owner, "removed": remove(prefix, owner, report=report)}
    wait_for_bundles(layout, wait_seconds, report)
    if export_to is not None:
        done["exported"] = export(layout, export_to, report)
        event = _announce(
            OWNER_EXPORTED, {k: done["exported"][k] for k in ("owner", "objects", "bytes", "index_sha256")}
        )
        done["exported"]["audit_record"] = _recorded(outputs, event, report)
        if erase and done["exported"]["audit_record"] is None:
            raise OwnerError(
                "the export is not in the audit log yet, so nothing was erased; run `fhe-deploy owner remove "
                f"{owner} --erase` once it is (the export is in {export_to})"
            )
    if erase:
        done["erased"] = erase_folders(layout, report)
        done["erased"]["responses"] = erase_responses(layout, report)
        detail = {"owner": owner, **{k: done["erased"][k] for k in ("object_versions", "responses")}}
        done["erased"]["audit_record"] = _recorded(outputs, _announce(OWNER_ERASED, detail), report)
    return done


def _announce(detail_type: str, detail: dict[str, Any]) -> str:
    try:
        return announce(detail_type, detail, str(detail["owner"]), OWNER_EVENT_SOURCE)
    except RuntimeError as error:
        raise OwnerError(f"the audit log's event could not be sent: {error}") from None


def pending_bundles(layout: BundleLayout) -> list[str]:
    """The owner's bundles that have neither a result nor a quarantine record yet (running, or about to start)."""
    s3 = aws.client("s3")
    pending = []
    for obj in listed_objects(s3, layout.folder(INBOX_PREFIX)):
        bundle = bundle_of_key(obj["Key"])
        if bundle is None:
            continue
        bundle_id = bundle[1]
        if not object_exists(s3, layout.result_manifest(bundle_id)) and not object_exists(
            s3, layout.quarantine_reason(bundle_id)
        ):
            pending.append(bundle_id)
    return pending


def wait_for_bundles(layout: BundleLayout, seconds: float, report: Callable[[str], None]) -> None:
    """Until every bundle the owner dropped has ended; OwnerError naming those still pending after ``seconds``."""
    deadline = time.monotonic() + seconds
    while pending := pending_bundles(layout):
        if time.monotonic() > deadline:
            raise OwnerError(
                f"{len(pending)} bundle(s) of the owner have not ended after {seconds:.0f} s ({', '.join(pending[:5])}"
                f"{', …' if len(pending) > 5 else ''}); its role is removed: run the removal again once they end"
            )
        report(f"waiting for {len(pending)} bundle(s) of the owner to end")
        time.sleep(POLL_S)


def export(layout: BundleLayout, folder: Path, report: Callable[[str], None]) -> dict[str, Any]:
    """Copy the current version of every object in the owner's outbox and quarantine folders under ``folder`` (which
    must be empty or new: nothing is overwritten), by key, with ``index.json`` listing each key, size and sha256."""
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise OwnerError(f"{folder} is not an empty folder: an export overwrites nothing")
    s3 = aws.client("s3")
    entries = []
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for top in EXPORTED_FOLDERS:
            for obj in listed_objects(s3, layout.folder(top)):
                target = folder / obj["Key"]
                if folder.resolve() not in target.resolve().parents:
                    raise OwnerError(f"object key {obj['Key'][:80]!r} would be written outside {folder}")
                target.parent.mkdir(parents=True, exist_ok=True)
                data = s3.get_object(Bucket=layout.bucket, Key=obj["Key"])["Body"].read()
                target.write_bytes(data)
                entries.append({"key": obj["Key"], "size": len(data), "sha256": hashlib.sha256(data).hexdigest()})
                if len(entries) % 100 == 0:
                    report(f"exported {len(entries)} objects")
        index = json.dumps(
            {"owner": layout.owner, "bucket": layout.bucket, "exported_at": utc_now(), "objects": entries},
            indent=2,
            sort_keys=True,
        ).encode()
        (folder / INDEX_NAME).write_bytes(index)
    except OSError as error:
        raise OwnerError(f"the export to {folder} failed: {error}; nothing was erased") from None
    total = sum(e["size"] for e in entries)
    report(f"exported {len(entries)} objects ({total} bytes) of {', '.join(EXPORTED_FOLDERS)} to {folder}")
    return {
        "owner": layout.owner,
        "folder": str(folder),
        "objects": len(entries),
        "bytes": total,
        "index_sha256": hashlib.sha256(index).hexdigest(),
    }


def _delete_versions(s3: Any, bucket: str, entries: list[dict[str, str]], where: str) -> None:
    for start in range(0, len(entries), DELETE_BATCH):
        batch = entries[start : start + DELETE_BATCH]
        answer = s3.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
        if answer.get("Errors"):
            first = answer["Errors"][0]
            raise OwnerError(
                f"{len(answer['Errors'])} object versions in {where} could not be deleted "
                f"({first.get('Code')}: {first.get('Message')}); run the removal again"
            )


def _versions(s3: Any, bucket: str, prefix: str) -> list[dict[str, str]]:
    pages = s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix)
    return [
        {"Key": v["Key"], "VersionId": v["VersionId"]}
        for page in pages
        for v in page.get("Versions", []) + page.get("DeleteMarkers", [])
    ]


def erase_folders(layout: BundleLayout, report: Callable[[str], None]) -> dict[str, Any]:
    """Delete every object version and delete marker under each of the owner's folders; the counts per folder."""
    s3 = aws.client("s3")
    counts: dict[str, int] = {}
    for top in OWNER_FOLDERS:
        entries = _versions(s3, layout.bucket, layout.folder(top).key + "/")
        _delete_versions(s3, layout.bucket, entries, f"{top}/")
        counts[top] = len(entries)
        report(f"{top}/: {counts[top]} object versions deleted")
    left = [top for top in OWNER_FOLDERS if _versions(s3, layout.bucket, layout.folder(top).key + "/")]
    if left:
        raise OwnerError(
            f"objects appeared in {', '.join(left)} while erasing (a bundle of the owner still running?); run the "
            "removal again once it has ended"
        )
    return {"object_versions": sum(counts.values()), "by_folder": counts}


def erase_responses(layout: BundleLayout, report: Callable[[str], None]) -> int:
    """Delete (every version of) each endpoint response that names one of the owner's folders: a shard result's
    answer names where its result lies. Returns how many responses went."""
    s3 = aws.client("s3")
    names = tuple(f"/{top}/{layout.owner}/".encode() for top in OWNER_FOLDERS)
    erased = 0
    for obj in listed_objects(s3, S3Uri(layout.bucket, RESPONSES_PREFIX)):
        body = get_bytes(s3, S3Uri(layout.bucket, obj["Key"]), field="response", limit=MAX_MESSAGE_BYTES)
        if any(name in body for name in names):
            _delete_versions(s3, layout.bucket, _versions(s3, layout.bucket, obj["Key"]), RESPONSES_PREFIX)
            erased += 1
    report(f"{RESPONSES_PREFIX}/: {erased} endpoint responses naming the owner deleted")
    return erased


def _recorded(outputs: dict[str, str], event_id: str, report: Callable[[str], None]) -> int | None:
    """The sequence number of the audit record of event ``event_id`` once the recorder has appended it; None if it
    has not within RECORD_WAIT_S (the recorder takes it from its queue later). OwnerError if it refused the event."""
    table = aws.session().resource("dynamodb").Table(outputs["AuditTableName"])
    deadline = time.monotonic() + RECORD_WAIT_S
    while True:
        for record in last_records(table, RECENT_RECORDS):
            if record.body.get("event_id") == event_id:
                if record.body.get("kind") == REFUSED_EVENT:
                    reason = record.body.get("detail", {}).get("reason")
                    raise OwnerError(f"the audit log refused the record (record {record.seq}): {reason}")
                report(f"recorded in the audit log (record {record.seq})")
                return record.seq
        if time.monotonic() > deadline:
            report(f"not yet in the audit log after {RECORD_WAIT_S:.0f} s; the recorder appends it when it can")
            return None
        time.sleep(2.0)
