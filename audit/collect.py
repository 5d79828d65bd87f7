"""Everything the audit report shows, read from the services' own APIs and records only: SageMaker (pipeline
executions, steps, the model registry), Step Functions (executions and their histories), the bundle bucket's
inbox, outbox and quarantine records, and the hash-chained audit log. Nothing here reads a key or decrypts.

What a batch owner wrote (its manifests, its estimate.json) is read with a size limit and shown only as the types
the report expects: a field of another type, too large or nested, is shown as missing or the file as unusable,
never trusted to be what the report needs.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from botocore.exceptions import ClientError
from cryptography import x509

from common.attestation import DOCUMENT_LIMIT, AttestationInvalid, verify_attestation
from common.audit_log import DECIDED_BY, REFUSED_EVENT, AuditRecord, read_chain, user_identity
from common.aws import is_missing
from common.bundle.enclave_manifest import EnclaveManifest, attestation_key, parse_either_manifest
from common.bundle.manifest import Manifest
from common.bundle.schema import MAX_MANIFEST_BYTES
from common.bundle.store import INBOX_PREFIX, BundleLayout, bundle_prefix
from common.model_package import ModelPackageError, describe, enclave_model_digest
from common.s3uri import S3Uri
from common.workflow import BundleRef, bundle_of_key, bundle_path
from infrastructure.package import ENCLAVE_SHARD_MAP_STATE, SHARD_MAP_STATE
from pipelines.executions import describe_run, iso, model_package_summary, runs_between, seconds_between

# The top-level states a bundle passes through: its shards are served by one of the two Maps, by its model's kind.
SERVING_STAGES = (SHARD_MAP_STATE, ENCLAVE_SHARD_MAP_STATE)
STAGES = ("Validate", *SERVING_STAGES, "Assemble", "Quarantine")
CHUNK = 8 * 1024 * 1024


@dataclass(frozen=True)
class Window:
    since: datetime
    until: datetime

    def holds(self, moment: datetime) -> bool:
        return self.since <= moment < self.until


@dataclass
class Sources:
    """The clients the audit reads through, and where the product's resources are."""

    sagemaker: Any
    stepfunctions: Any
    s3: Any
    audit_table: Any  # a boto3 DynamoDB Table resource
    state_machine_arn: str
    bundle_bucket: str
    pipeline_name: str
    kms: Any = None  # for the audit signing key's public key
    signing_key_arn: str = ""
    enclave_key_arn: str = ""  # the enclave path's key, whose policy names the measurements it releases keys to
    attestation_root: x509.Certificate | None = None  # the root enclaves' attestation documents must chain to
    scaling: Any = None  # Application Auto Scaling: each endpoint's instance count over time (audit/usage.py)
    endpoint_family: str = ""  # the deployment's endpoint name; version v's endpoint is <family>-v<v>
    progress: Callable[[str], None] = field(default=lambda line: None)


def _body_if_any(s3: Any, uri: S3Uri) -> Any:
    """The object's streaming body; None when it is not there."""
    try:
        return s3.get_object(Bucket=uri.bucket, Key=uri.key)["Body"]
    except ClientError as error:
        if is_missing(error):
            return None
        raise


def sha256_of(s3: Any, uri: S3Uri) -> str | None:
    """The sha256 of an object's bytes, streamed; None when it is not there."""
    if (body := _body_if_any(s3, uri)) is None:
        return None
    digest = hashlib.sha256()
    for chunk in iter(lambda: body.read(CHUNK), b""):
        digest.update(chunk)
    return digest.hexdigest()


def read_manifest_if_any(s3: Any, uri: S3Uri) -> Manifest | EnclaveManifest | None:
    """The manifest (of either path) at ``uri`` if it is there and valid; None otherwise. An owner wrote a request
    manifest, so at most one byte more than a manifest may have is read."""
    if (body := _body_if_any(s3, uri)) is None:
        return None
    try:
        return parse_either_manifest(body.read(MAX_MANIFEST_BYTES + 1))
    except ValueError:
        return None  # a malformed manifest: the bundle's quarantine record says why


def read_json_if_any(s3: Any, uri: S3Uri) -> dict[str, Any] | None:
    if (body := _body_if_any(s3, uri)) is None:
        return None
    data: dict[str, Any] = json.loads(body.read())
    return data


# ---- pipeline executions and the registry ------------------------------------------------------------------


def pipeline_runs(sources: Sources, window: Window) -> list[dict[str, Any]]:
    arns = runs_between(sources.sagemaker, sources.pipeline_name, window.since, window.until)
    runs = []
    for number, arn in enumerate(arns, 1):
        sources.progress(f"pipeline execution {number}/{len(arns)}")
        runs.append(describe_run(sources.sagemaker, sources.s3, arn))
    return runs


def audit_records(sources: Sources) -> list[AuditRecord]:
    return list(read_chain(sources.audit_table))


def _when(text: str) -> datetime:
    return datetime.fromisoformat(str(text).replace("Z", "+00:00"))


def approvals(records: list[AuditRecord]) -> list[dict[str, Any]]:
    """Every approval decision on record, oldest first."""
    decisions = []
    for record in records:
        body = record.body
        if body.get("kind") != "approval":
            continue
        detail = body.get("detail", {})
        modified = detail.get("LastModifiedTime")
        when = _when(modified) if isinstance(modified, str) and modified else _when(body["time"])
        decided_by = detail.get(DECIDED_BY)  # the registry's LastModifiedBy, as the recorder read it
        if not decided_by and isinstance(detail.get("LastModifiedBy"), dict):  # a record of an earlier recorder
            decided_by = user_identity(detail["LastModifiedBy"])
        decisions.append(
            {
                "seq": record.seq,
                "time": when.isoformat(),
                "package_arn": body.get("subject"),
                "version": detail.get("ModelPackageVersion"),
                "status": detail.get("ModelApprovalStatus"),
                "note": detail.get("ApprovalDescription", ""),
                "decided_by": decided_by or "unknown",
                "source": body.get("source"),
            }
        )
    return sorted(decisions, key=lambda d: d["time"])


def refused_events(records: list[AuditRecord]) -> list[dict[str, Any]]:
    """Every event the recorder refused, oldest first: what it claimed to be (source, detail type) and why."""
    refused = []
    for record in records:
        body = record.body
        if body.get("kind") != REFUSED_EVENT:
            continue
        refused.append(
            {
                "seq": record.seq,
                "time": body.get("time"),
                "event_id": body.get("event_id"),
                "source": body.get("source"),
                "detail_type": body.get("subject"),
                "reason": body.get("detail", {}).get("reason"),
            }
        )
    return refused


def version_endpoints(records: list[AuditRecord]) -> list[dict[str, Any]]:
    """Every model version's endpoint on record: when it was deployed and by whom, and its retirement if any."""
    endpoints: dict[str, dict[str, Any]] = {}
    for record in records:
        kind, detail = record.body.get("kind"), record.body.get("detail", {})
        if kind not in ("version_served", "version_retired"):
            continue
        entry = endpoints.setdefault(
            str(detail.get("endpoint")),
            {
                "endpoint": detail.get("endpoint"),
                "version": detail.get("version"),
                "model_package_arn": None,
                "served": None,
                "served_by": None,
                "served_seq": None,
                "retired": None,
                "retired_by": None,
                "retired_seq": None,
            },
        )
        if kind == "version_served":  # a redeploy of the version keeps its first deployment
            entry["model_package_arn"] = detail.get("model_package_arn") or entry["model_package_arn"]
            if entry["served"] is None:
                entry.update(served=record.body.get("time"), served_by=detail.get("by"), served_seq=record.seq)
        else:
            entry.update(retired=record.body.get("time"), retired_by=detail.get("by"), retired_seq=record.seq)
    return sorted(endpoints.values(), key=lambda e: (e["version"] or 0, e["endpoint"]))


def offboarding(records: list[AuditRecord], window: Window | None = None) -> list[dict[str, Any]]:
    """Every owner's data export and erasure on record (in the window, if one is given): who, when, the counts."""
    found = []
    for record in records:
        body = record.body
        if body.get("kind") not in ("owner_exported", "owner_erased"):
            continue
        when = moment(body.get("time"))
        if window is not None and when is not None and not window.holds(when):
            continue
        found.append({"kind": body["kind"], "owner": body.get("subject"), "time": body.get("time"), "seq": record.seq,
                      **{k: v for k, v in body.get("detail", {}).items() if k != "owner"}})  # fmt: skip
    return found


def erased_owners(records: list[AuditRecord]) -> dict[str, dict[str, Any]]:
    """Owner → its (latest) erasure on record: its bundles' objects are gone, by design."""
    return {entry["owner"]: entry for entry in offboarding(records) if entry["kind"] == "owner_erased"}


def moment(text: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except (TypeError, ValueError):
        return None


def packages(sources: Sources, arns: set[str]) -> dict[str, dict[str, Any]]:
    """The registry's current view of each package named anywhere in the report."""
    found = {}
    for arn in sorted(arns):
        try:
            found[arn] = model_package_summary(sources.sagemaker, arn)
        except ClientError as error:
            found[arn] = {"arn": arn, "status": "unknown", "error": error.response.get("Error", {}).get("Message")}
    return found


# ---- bundles -------------------------------------------------------------------------------------------------


def _history(sfn: Any, execution_arn: str) -> Iterator[dict[str, Any]]:
    pages = sfn.get_paginator("get_execution_history").paginate(executionArn=execution_arn)
    for page in pages:
        yield from page["events"]


def validated_plan(sources: Sources, execution_arn: str) -> dict[str, Any]:
    """The plan Validate made for an execution's bundle (its model package, endpoint, shards), from the execution's
    history; empty when Validate did not pass or the execution cannot be read."""
    try:
        stages = stage_times(list(_history(sources.stepfunctions, execution_arn)))
        plan = json.loads(stages.get("Validate", {}).get("output") or "{}").get("plan", {})
    except (ClientError, ValueError, AttributeError):
        return {}
    return plan if isinstance(plan, dict) else {}


def stage_times(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """When each top-level state was entered and left (the Map's iterations have other names)."""
    stages: dict[str, dict[str, Any]] = {}
    for event in events:
        entered = event.get("stateEnteredEventDetails", {}).get("name")
        exited = event.get("stateExitedEventDetails", {}).get("name")
        if entered in STAGES and entered not in stages:
            stages[entered] = {"entered": event["timestamp"], "exited": None}
        if exited in STAGES and exited in stages:
            stages[exited]["exited"] = event["timestamp"]
            if exited == "Validate":
                stages[exited]["output"] = event["stateExitedEventDetails"].get("output")
    return stages


def object_digests(s3: Any, manifest_uri: S3Uri, manifest: Manifest | EnclaveManifest | None) -> list[dict[str, Any]]:
    """The manifest and each shard it lists: key, the sha256 the manifest declares, the sha256 of the bytes."""
    objects = [{"uri": str(manifest_uri), "declared_sha256": None, "sha256": sha256_of(s3, manifest_uri)}]
    if manifest is None:
        return objects
    prefix = bundle_prefix(manifest_uri)
    for entry in manifest.shards:
        uri = prefix.join(entry.key)
        objects.append({"uri": str(uri), "declared_sha256": entry.sha256, "sha256": sha256_of(s3, uri)})
    return objects


def _outcome(execution: dict[str, Any]) -> str:
    if execution["status"] == "SUCCEEDED":
        return "delivered"
    if execution["status"] == "FAILED" and execution.get("error") == "BundleQuarantined":
        return "quarantined"
    return str(execution["status"]).lower()


def bundle_run(sources: Sources, summary: dict[str, Any]) -> dict[str, Any]:
    sfn, s3 = sources.stepfunctions, sources.s3
    execution = sfn.describe_execution(executionArn=summary["executionArn"])
    started = json.loads(execution.get("input") or "{}")
    ref = BundleRef.from_dict(started.get("bundle"))
    layout = ref.layout
    stages = stage_times(list(_history(sfn, summary["executionArn"])))
    plan = json.loads(stages.get("Validate", {}).get("output") or "{}").get("plan", {})
    request = read_manifest_if_any(s3, ref.manifest_uri)
    result = read_manifest_if_any(s3, layout.result_manifest(ref.bundle_id))
    outcome = _outcome(execution)
    path = "enclave" if plan.get("path") == "enclave" or isinstance(request, EnclaveManifest) else "fhe"
    run: dict[str, Any] = {
        "bundle": ref.path,
        "owner": ref.owner,
        "bundle_id": ref.bundle_id,
        "path": path,
        "execution": summary["executionArn"],
        "status": execution["status"],
        "outcome": outcome,
        "started": iso(execution.get("startDate")),
        "ended": iso(execution.get("stopDate")),
        "seconds": seconds_between(execution.get("startDate"), execution.get("stopDate")),
        "submitted_by": started.get("submitted", {}).get("requester") or "unknown",
        "submitted_from": started.get("submitted", {}).get("source_ip") or "",
        "model_package_arn": plan.get("model_package_arn") or (request.model.package_arn if request else None),
        "model_package_version": None,
        "endpoint": plan.get("endpoint"),  # the one serving the bundle's version (none if it never got that far)
        "shards": plan.get("shards") if plan else (len(request.shards) if request else None),
        "samples": plan.get("samples") if plan else (request.total_samples if request else None),
        "stages": {
            name: {
                "started": iso(times["entered"]),
                "ended": iso(times["exited"]),
                "seconds": seconds_between(times["entered"], times["exited"]),
            }
            for name, times in stages.items()
        },
        "input_objects": object_digests(s3, ref.manifest_uri, request),
        "output_objects": (
            object_digests(s3, layout.result_manifest(ref.bundle_id), result) if outcome == "delivered" else []
        ),
        "result_versions": dict(result.versions) if result else None,
        # What the owner was told before paying (fhe-client's estimate, dropped beside the manifest), if anything.
        "estimate": estimate_shown(s3, layout.estimate(ref.bundle_id)),
        "result_model_package_arn": result.model.package_arn if result else None,
    }
    if run["model_package_arn"]:
        run["model_package_version"] = int(str(run["model_package_arn"]).rsplit("/", 1)[-1])
    if isinstance(request, EnclaveManifest) and request.generation is not None:
        # A text bundle's settings, as its manifest carries them (validated: within their limits).
        run["generation"] = request.generation.to_dict()
    if path == "enclave":
        sealed = result if outcome == "delivered" and isinstance(result, EnclaveManifest) else None
        run["served_by"] = shards_served(sources, ref, sealed) if sealed is not None else []
    if outcome == "quarantined":
        reason_uri = layout.quarantine_reason(ref.bundle_id)
        reason = read_json_if_any(s3, reason_uri) or {}
        run["quarantine"] = {
            k: reason.get(k)
            for k in ("stage", "code", "field", "shard", "message", "error")
            if reason.get(k) is not None
        }
        run["quarantine"]["record"] = str(reason_uri)
    elif execution["status"] == "FAILED":
        run["failure"] = {"error": execution.get("error"), "cause": (execution.get("cause") or "")[:500]}
    return run


# ---- the enclave path: what served each shard, and what the key policy and the registry say should have ------------


def shards_served(sources: Sources, ref: BundleRef, result: EnclaveManifest) -> list[dict[str, Any]]:
    """Per shard of a delivered enclave bundle, what the attestation document its enclave presented for the
    shard's data key proves served it (measurement, model digest), or why the document proves nothing: missing,
    not verifying against the trusted root, or made for another shard. The parent wrote the document where it
    wrote the sealed results, but could not have made it: the NSM signed it."""
    prefix = ref.layout.result_prefix(ref.bundle_id)
    served = []
    for entry in result.shards:
        uri = prefix.join(attestation_key(entry.index))
        shard: dict[str, Any] = {"shard": entry.index, "document": str(uri), "image_sha384": None,
                                 "model_digest": None, "attested_at": None, "problem": None}  # fmt: skip
        body = _body_if_any(sources.s3, uri)
        if body is None:
            shard["problem"] = "its attestation document is missing"
        elif sources.attestation_root is None:
            shard["problem"] = "no attestation root is trusted"
        else:
            try:
                proof = verify_attestation(body.read(DOCUMENT_LIMIT + 1), sources.attestation_root)
            except AttestationInvalid as error:
                shard["problem"] = f"its attestation document does not verify: {error}"
            else:
                shard.update(
                    image_sha384=proof.image_sha384, model_digest=proof.model_digest, attested_at=iso(proof.issued)
                )
                if proof.nonce != result.binding(ref.owner, entry.index).attestation_nonce():
                    shard["problem"] = "its attestation document was made for another shard"
        served.append(shard)
    return served


ATTESTED_MEASUREMENT_KEYS = ("kms:recipientattestation:imagesha384", "kms:recipientattestation:pcr0")


def _listed(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def _allows_decrypt(statement: dict[str, Any]) -> bool:
    actions = [a.lower() for a in _listed(statement.get("Action", []))]
    return statement.get("Effect") == "Allow" and any(a in ("kms:decrypt", "kms:*", "*") for a in actions)


def enclave_key_policy(sources: Sources) -> dict[str, Any] | None:
    """What the enclave key's policy releases data keys to: the enclave measurements its ``kms:Decrypt``
    statements pin (``kms:RecipientAttestation:ImageSha384`` or ``PCR0``), and the statements that allow
    ``kms:Decrypt`` without pinning one (which would release keys to something other than a measured enclave).
    None where the deployment has no enclave path."""
    if not sources.enclave_key_arn or sources.kms is None:
        return None
    try:
        answer = sources.kms.get_key_policy(KeyId=sources.enclave_key_arn, PolicyName="default")
        statements = json.loads(answer["Policy"]).get("Statement", [])
    except (ClientError, ValueError, AttributeError) as error:
        return {"key_arn": sources.enclave_key_arn, "error": str(error), "measurements": [], "unattested": []}
    measurements: set[str] = set()
    unattested = []
    for number, statement in enumerate(statements if isinstance(statements, list) else [statements]):
        if not isinstance(statement, dict) or not _allows_decrypt(statement):
            continue
        pinned = [
            value.lower()
            for condition in (statement.get("Condition") or {}).values()
            if isinstance(condition, dict)
            for key, values in condition.items()
            if key.lower() in ATTESTED_MEASUREMENT_KEYS
            for value in _listed(values)
        ]
        if pinned:
            measurements.update(pinned)
        else:
            unattested.append(str(statement.get("Sid") or f"statement {number}"))
    return {"key_arn": sources.enclave_key_arn, "measurements": sorted(measurements), "unattested": unattested}


def registered_model_digests(sources: Sources, package_arns: set[str]) -> dict[str, str | None]:
    """Each enclave package's registered model digest (what its attestation must name); None where unreadable."""
    digests: dict[str, str | None] = {}
    for arn in sorted(package_arns):
        try:
            digests[arn] = enclave_model_digest(describe(sources.sagemaker, arn))
        except (ClientError, ModelPackageError):
            digests[arn] = None
    return digests


MAX_ESTIMATE_BYTES = 16 * 1024
MAX_SHOWN_TEXT = 64  # characters of an owner-written text field the report shows
MAX_SHOWN_NUMBER = 1e15  # larger magnitudes are no estimate of seconds, instances or cost


def shown_number(value: Any) -> int | float | None:
    """A finite number of a sensible size as written; None for anything else (text, bool, NaN, huge, nested)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value if abs(value) <= MAX_SHOWN_NUMBER else None


def shown_text(value: Any) -> str | None:
    """A short text as written (cut to MAX_SHOWN_TEXT characters); None for anything that is not text."""
    return value[:MAX_SHOWN_TEXT] if isinstance(value, str) else None


# The estimate's fields the report shows, each as the one type it can show.
ESTIMATE_FIELDS: dict[str, Callable[[Any], Any]] = {
    "seconds": shown_number,
    "fhe_seconds": shown_number,
    "cost": shown_number,
    "currency": shown_text,
    "prices_as_of": shown_text,
    "instance_type": shown_text,
    "instances": shown_number,
}


def estimate_shown(s3: Any, uri: S3Uri) -> dict[str, Any] | None:
    """The owner's estimate as the report shows it; the owner wrote it, so it is read with a limit, each known
    field is kept only as the type the report shows (anything else is missing), and an estimate without its
    seconds is said to be unusable rather than trusted."""
    body = _body_if_any(s3, uri)
    if body is None:
        return None
    data = body.read(MAX_ESTIMATE_BYTES + 1)
    try:
        # NaN and Infinity parse, to be shown as missing like any other value that is no usable number.
        estimate = json.loads(data) if len(data) <= MAX_ESTIMATE_BYTES else None
    except (ValueError, RecursionError):  # not JSON (or not UTF-8, or digits past Python's limit); nested too deep
        estimate = None
    if not isinstance(estimate, dict):
        return {"unusable": str(uri)}
    shown = {name: kind(estimate.get(name)) for name, kind in ESTIMATE_FIELDS.items()}
    if shown["seconds"] is None:
        return {"unusable": str(uri)}
    return shown


def bundle_runs(sources: Sources, window: Window) -> list[dict[str, Any]]:
    pages = sources.stepfunctions.get_paginator("list_executions").paginate(stateMachineArn=sources.state_machine_arn)
    summaries = [e for page in pages for e in page["executions"] if window.holds(e["startDate"])]
    summaries.sort(key=lambda e: e["startDate"])
    runs = []
    for number, summary in enumerate(summaries, 1):
        sources.progress(f"bundle execution {number}/{len(summaries)}")
        runs.append(bundle_run(sources, summary))
    return runs


def inbox_manifests(sources: Sources, window: Window) -> list[dict[str, Any]]:
    """Every request manifest dropped in the window, with whether a result or a quarantine record answers it."""
    s3 = sources.s3
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=sources.bundle_bucket, Prefix=f"{INBOX_PREFIX}/")
    found = []
    for obj in (o for page in pages for o in page.get("Contents", [])):
        bundle = bundle_of_key(obj["Key"])
        if bundle is None or not window.holds(obj["LastModified"]):
            continue
        owner, bundle_id = bundle
        layout = BundleLayout(sources.bundle_bucket, owner)
        found.append(
            {
                "bundle": bundle_path(owner, bundle_id),
                "owner": owner,
                "bundle_id": bundle_id,
                "dropped": iso(obj["LastModified"]),
                "result": sha256_of(s3, layout.result_manifest(bundle_id)) is not None,
                "quarantine": sha256_of(s3, layout.quarantine_reason(bundle_id)) is not None,
            }
        )
    return found


def current_record_digests(sources: Sources, bundles: set[tuple[str, str]]) -> dict[str, dict[str, str | None]]:
    """The sha256 of each (owner, bundle id)'s result manifest and quarantine record as they are now, by
    :func:`bundle_path`."""
    digests = {}
    for owner, bundle_id in sorted(bundles):
        layout = BundleLayout(sources.bundle_bucket, owner)
        digests[bundle_path(owner, bundle_id)] = {
            "result_manifest": sha256_of(sources.s3, layout.result_manifest(bundle_id)),
            "quarantine_record": sha256_of(sources.s3, layout.quarantine_reason(bundle_id)),
        }
    return digests


def serving_versions_of(sources: Sources, package_arn: str) -> dict[str, str] | None:
    from common.model_package import serving_versions

    try:
        package = sources.sagemaker.describe_model_package(ModelPackageName=package_arn)
        return serving_versions(sources.s3, package).to_dict()
    except (ClientError, ValueError):
        return None
