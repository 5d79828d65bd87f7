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
from common.bundle.schema import BundleError, check_owner, utc_now
from common.bundle.store import OUTBOX_PREFIX, OWNER_FOLDERS, QUARANTINE_PREFIX, BundleLayout
from common.stack_outputs import DeploymentNotFound, StackNames, describe_stack, read_outputs, stack_outputs
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


# ---- an owner leaving: its data exported and erased, each recorded in the audit log -----------------------------

EXPORTED_FOLDERS = (OUTBOX_PREFIX, QUARANTINE_PREFIX)  # the owner's results and the records of its quarantined bundles
INDEX_NAME = "index.json"
RECORD_WAIT_S = 120.0  # how long offboarding waits for the recorder to append its record
DELETE_BATCH = 1000  # S3 DeleteObjects' limit per call
RECENT_RECORDS = 100  # the newest records searched for the one offboarding announced


def offboard(
    prefix: str,
    name: str,
    *,
    export_to: Path | None = None,
    erase: bool = False,
    report: Callable[[str], None] = print,
) -> dict[str, Any]:
    """``fhe-deploy owner remove NAME [--export DIR] [--erase]``: the owner's results and quarantine records copied
    to ``export_to`` first (with an index of their sha256), then its role deleted (it can write nothing more), then
    with ``erase`` every object version and delete marker under its folders deleted (its evaluation keys, bundles,
    results, records and shard requests). The export and the erasure are each announced for the audit log, which
    records an erasure only once the bucket shows the folders empty; this waits for each record."""
    owner = _checked(name)
    outputs = read_outputs(prefix)
    layout = BundleLayout(outputs["BundleBucketName"], owner)
    done: dict[str, Any] = {"owner": owner}
    if export_to is not None:
        done["exported"] = export(layout, export_to, report)
        done["exported"]["audit_record"] = _recorded(
            outputs, announce(OWNER_EXPORTED, _detail(done["exported"]), owner, OWNER_EVENT_SOURCE), report
        )
    done["removed"] = remove(prefix, owner, report=report)
    if erase:
        done["erased"] = erase_folders(layout, report)
        detail = {"owner": owner, "object_versions": done["erased"]["object_versions"]}
        done["erased"]["audit_record"] = _recorded(
            outputs, announce(OWNER_ERASED, detail, owner, OWNER_EVENT_SOURCE), report
        )
    return done


def _detail(exported: dict[str, Any]) -> dict[str, Any]:
    return {k: exported[k] for k in ("owner", "objects", "bytes", "index_sha256")}


def export(layout: BundleLayout, folder: Path, report: Callable[[str], None]) -> dict[str, Any]:
    """Copy the current version of every object in the owner's outbox and quarantine folders under ``folder`` (which
    must be empty or new: nothing is overwritten), by key, with ``index.json`` listing each key, size and sha256."""
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise OwnerError(f"{folder} is not an empty folder: an export overwrites nothing")
    s3 = aws.client("s3")
    entries = []
    for top in EXPORTED_FOLDERS:
        prefix = layout.folder(top)
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=prefix.bucket, Prefix=prefix.key)
        for obj in (o for page in pages for o in page.get("Contents", [])):
            target = folder / obj["Key"]
            if folder.resolve() not in target.resolve().parents:
                raise OwnerError(f"object key {obj['Key'][:80]!r} would be written outside {folder}")
            target.parent.mkdir(parents=True, exist_ok=True)
            data = s3.get_object(Bucket=prefix.bucket, Key=obj["Key"])["Body"].read()
            target.write_bytes(data)
            entries.append({"key": obj["Key"], "size": len(data), "sha256": hashlib.sha256(data).hexdigest()})
            if len(entries) % 100 == 0:
                report(f"exported {len(entries)} objects")
    folder.mkdir(parents=True, exist_ok=True)
    index = json.dumps(
        {"owner": layout.owner, "bucket": layout.bucket, "exported_at": utc_now(), "objects": entries},
        indent=2,
        sort_keys=True,
    ).encode()
    (folder / INDEX_NAME).write_bytes(index)
    total = sum(e["size"] for e in entries)
    report(f"exported {len(entries)} objects ({total} bytes) of {', '.join(EXPORTED_FOLDERS)} to {folder}")
    return {
        "owner": layout.owner,
        "folder": str(folder),
        "objects": len(entries),
        "bytes": total,
        "index_sha256": hashlib.sha256(index).hexdigest(),
    }


def erase_folders(layout: BundleLayout, report: Callable[[str], None]) -> dict[str, Any]:
    """Delete every object version and delete marker under each of the owner's folders; the counts per folder."""
    s3 = aws.client("s3")
    counts: dict[str, int] = {}
    for top in OWNER_FOLDERS:
        prefix = layout.folder(top)
        counts[top] = 0
        pages = s3.get_paginator("list_object_versions").paginate(Bucket=prefix.bucket, Prefix=prefix.key)
        for page in pages:
            entries = [
                {"Key": v["Key"], "VersionId": v["VersionId"]}
                for v in page.get("Versions", []) + page.get("DeleteMarkers", [])
            ]
            for start in range(0, len(entries), DELETE_BATCH):
                batch = entries[start : start + DELETE_BATCH]
                answer = s3.delete_objects(Bucket=prefix.bucket, Delete={"Objects": batch, "Quiet": True})
                if answer.get("Errors"):
                    first = answer["Errors"][0]
                    raise OwnerError(
                        f"{len(answer['Errors'])} object versions in {top}/ could not be deleted "
                        f"({first.get('Code')}: {first.get('Message')}); run the removal again"
                    )
                counts[top] += len(batch)
        report(f"{top}/: {counts[top]} object versions deleted")
    left = [top for top in OWNER_FOLDERS if _holds_any(s3, layout.folder(top))]
    if left:
        raise OwnerError(
            f"objects appeared in {', '.join(left)} while erasing (a bundle of the owner still running?); run the "
            "removal again once it has ended"
        )
    return {"object_versions": sum(counts.values()), "by_folder": counts}


def _holds_any(s3: Any, prefix: Any) -> bool:
    listed = s3.list_object_versions(Bucket=prefix.bucket, Prefix=prefix.key, MaxKeys=1)
    return bool(listed.get("Versions") or listed.get("DeleteMarkers"))


def _recorded(outputs: dict[str, str], event_id: str, report: Callable[[str], None]) -> int | None:
    """The sequence number of the audit record of event ``event_id`` once the recorder has appended it; None if it
    has not within RECORD_WAIT_S (the recorder takes it from its queue later), or if it refused the event."""
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
