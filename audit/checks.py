"""The consistency checks of the audit report. Each one is a pure function of what ``collect`` read, and names
every bundle, model package or record that breaks it, so a failure says where to look.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from audit.collect import SERVING_STAGES
from audit.signatures import SigningKey, signature_problems
from common.audit_log import AuditRecord, chain_problems

APPROVED = "Approved"
REGISTERED_STATUS = "PendingManualApproval"  # what the pipeline registers a package as (its status before a decision)
VERSION_FIELDS = ("concrete_python", "concrete_ml")  # what must match exactly (Python only by major.minor)


@dataclass
class Check:
    name: str
    description: str
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def _time(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def erased(check: Check, bundle: dict[str, Any]) -> bool:
    """Whether ``bundle``'s owner had its data erased after it ended (its objects are gone by design); if so the
    check says so in a note instead of checking the objects."""
    erasure = bundle.get("erased")
    if erasure:
        check.notes.append(
            f"bundle {bundle['bundle']}: its owner's data was erased on {erasure['time']} (audit record "
            f"{erasure['seq']}); its objects are gone by design"
        )
    return bool(erasure)


def inbox_accounted_for(manifests: list[dict[str, Any]], bundles: list[dict[str, Any]]) -> Check:
    check = Check("inbox_accounted_for", "Every manifest dropped in the inbox has a result or a quarantine record.")
    running = {b["bundle"] for b in bundles if b["status"] == "RUNNING"}
    for manifest in manifests:
        if manifest["result"] or manifest["quarantine"]:
            continue
        if manifest["bundle"] in running:
            check.notes.append(f"bundle {manifest['bundle']} is still running")
        else:
            check.failures.append(
                f"bundle {manifest['bundle']} (dropped {manifest['dropped']}) has neither a result nor a "
                "quarantine record"
            )
    return check


def approval_timeline(
    package_arn: str, decisions: list[dict[str, Any]], registry: dict[str, Any]
) -> list[tuple[datetime, str, str]]:
    """(time, status, where it is known from) for one package, oldest first.

    The decisions on record come first; the registry's current status is added when it differs from the last one
    on record (a decision the audit log did not receive), dated by the registry's last modification.
    """
    timeline = [
        (datetime.fromisoformat(d["time"]), str(d["status"]), f"audit record {d['seq']}")
        for d in decisions
        if d["package_arn"] == package_arn
    ]
    current, modified = registry.get("status"), _time(registry.get("last_modified"))
    if current and modified and (not timeline or timeline[-1][1] != current):
        timeline.append((modified, str(current), "the registry (no decision on record)"))
    return sorted(timeline)


def status_at(timeline: list[tuple[datetime, str, str]], moment: datetime) -> str:
    status = REGISTERED_STATUS
    for when, value, _ in timeline:
        if when <= moment:
            status = value
    return status


REVOKED = "model_revoked"  # the quarantine code of a bundle whose package was rejected while it was served


def served_while_approved(
    bundles: list[dict[str, Any]], decisions: list[dict[str, Any]], registry: dict[str, dict[str, Any]]
) -> Check:
    check = Check(
        "served_while_approved",
        "Every model package that served a bundle was Approved for the whole time the endpoint served it.",
    )
    for bundle in bundles:
        serving = next((bundle["stages"][name] for name in SERVING_STAGES if name in bundle["stages"]), None)
        package_arn = bundle.get("model_package_arn")
        if not serving or not package_arn:
            continue  # never reached the endpoint
        start = _time(serving["started"])
        end = _time(serving["ended"]) or _time(bundle.get("ended")) or datetime.now(tz=start.tzinfo if start else None)
        if start is None:
            continue
        timeline = approval_timeline(package_arn, decisions, registry.get(package_arn, {}))
        seen = [(start, status_at(timeline, start), "")]
        # A bundle the package's revocation stopped (quarantined, no result) was served until the rejection only.
        revoked = (bundle.get("quarantine") or {}).get("code") == REVOKED
        seen += [(when, status, source) for when, status, source in timeline if start < when <= end and not revoked]
        for when, status, source in seen:
            if status != APPROVED:
                known = f" (known from {source})" if source else ""
                check.failures.append(
                    f"bundle {bundle['bundle']} was served by model package {package_arn} "
                    f"(version {bundle.get('model_package_version')}) while it was {status} at {when.isoformat()}"
                    f"{known}; serving ran {start.isoformat()} – {end.isoformat()}"
                )
                break
    return check


def result_versions_match_model(
    bundles: list[dict[str, Any]], serving: Mapping[str, Mapping[str, str] | None]
) -> Check:
    check = Check(
        "result_versions_match_model",
        "Every result records the model package that served it and, for FHE, the releases that model was built "
        "with (an enclave model's digest is checked against its shards' attestations).",
    )
    for bundle in bundles:
        if bundle["outcome"] != "delivered" or erased(check, bundle):
            continue
        if bundle.get("result_model_package_arn") != bundle.get("model_package_arn"):
            check.failures.append(
                f"bundle {bundle['bundle']}: the result names {bundle.get('result_model_package_arn')}, "
                f"the workflow validated {bundle.get('model_package_arn')}"
            )
            continue
        if bundle.get("path") == "enclave":
            continue
        model = serving.get(str(bundle.get("model_package_arn")))
        recorded = bundle.get("result_versions") or {}
        if model is None:
            check.failures.append(f"bundle {bundle['bundle']}: the versions of its model cannot be read")
            continue
        for name in VERSION_FIELDS:
            if recorded.get(name) != model.get(name):
                check.failures.append(
                    f"bundle {bundle['bundle']}: the result records {name} {recorded.get(name)}, "
                    f"the model {model.get(name)}"
                )
        python = str(recorded.get("python", "")).split(".")[:2]
        if python != str(model.get("python", "")).split(".")[:2]:
            check.failures.append(
                f"bundle {bundle['bundle']}: the result records Python {recorded.get('python')}, "
                f"the model {model.get('python')}"
            )
    return check


def enclave_served_as_attested(
    bundles: list[dict[str, Any]], key_policy: dict[str, Any] | None, model_digests: Mapping[str, str | None]
) -> Check:
    check = Check(
        "enclave_served_as_attested",
        "Every shard of a delivered enclave bundle was served by an enclave whose attestation document verifies "
        "against the Nitro attestation root and was made for that shard, with a measurement the enclave key's "
        "policy releases keys to and the registered model's digest; the policy releases keys to measured enclaves "
        "only.",
    )
    delivered = [
        b for b in bundles if b.get("path") == "enclave" and b["outcome"] == "delivered" and not erased(check, b)
    ]
    if key_policy is None:
        if delivered:
            check.failures.append("enclave bundles were delivered, but the deployment names no enclave key")
        return check
    if key_policy.get("error"):
        check.failures.append(
            f"the enclave key's policy ({key_policy['key_arn']}) is unreadable: {key_policy['error']}"
        )
    for statement in key_policy["unattested"]:
        check.failures.append(
            f"the enclave key's policy statement {statement} allows kms:Decrypt without pinning an enclave measurement"
        )
    pinned = set(key_policy["measurements"])
    for bundle in delivered:
        name, package_arn = bundle["bundle"], str(bundle.get("model_package_arn"))
        registered = model_digests.get(package_arn)
        if not bundle.get("served_by"):
            check.failures.append(f"bundle {name}: no shard has an attestation document")
        for shard in bundle.get("served_by", []):
            where = f"bundle {name}, shard {shard['shard']}"
            if shard["problem"]:
                check.failures.append(f"{where}: {shard['problem']}")
                continue
            if shard["image_sha384"] not in pinned:
                check.failures.append(
                    f"{where}: served by enclave measurement {shard['image_sha384']}, which the enclave key's policy "
                    f"does not name (it names {', '.join(sorted(pinned)) or 'none'}; a policy changed since says so "
                    "in CloudTrail's PutKeyPolicy events)"
                )
            if registered is None:
                check.failures.append(f"{where}: the registered digest of {package_arn}'s model cannot be read")
            elif shard["model_digest"] != registered:
                check.failures.append(
                    f"{where}: the enclave served model digest {shard['model_digest']}, {package_arn} registers "
                    f"{registered}"
                )
    return check


def objects_match_manifests(bundles: list[dict[str, Any]]) -> Check:
    check = Check(
        "objects_match_manifests", "Every ciphertext object a manifest lists is there with the sha256 it declares."
    )
    for bundle in bundles:
        if erased(check, bundle):
            continue
        for obj in [*bundle["input_objects"], *bundle["output_objects"]]:
            if obj["sha256"] is None and bundle["outcome"] == "delivered":
                check.failures.append(f"bundle {bundle['bundle']}: {obj['uri']} is missing")
            elif obj["declared_sha256"] and obj["sha256"] and obj["declared_sha256"] != obj["sha256"]:
                check.failures.append(
                    f"bundle {bundle['bundle']}: {obj['uri']} has sha256 {obj['sha256']}, "
                    f"its manifest declares {obj['declared_sha256']}"
                )
    return check


def audit_log_unaltered(
    records: list[AuditRecord],
    bundles: list[dict[str, Any]],
    current: dict[str, dict[str, str | None]],
    signing_key: SigningKey,
) -> Check:
    check = Check(
        "audit_log_unaltered",
        "The audit log's hash chain is unbroken and every record carries the recorder's signature, every bundle "
        "outcome is on record, and every result manifest and quarantine record still has the sha256 recorded when "
        "it was written.",
    )
    check.failures.extend(chain_problems(records))
    unsigned, notes = signature_problems(records, signing_key)
    check.failures.extend(unsigned)
    check.notes.extend(notes)
    recorded: dict[str, dict[str, Any]] = {}
    for record in records:
        body = record.body
        if body.get("kind") in ("bundle_completed", "bundle_quarantined"):
            recorded[f"{body['kind']}:{body['subject']}"] = {**body.get("detail", {}), "seq": record.seq}
    for bundle in bundles:
        bundle_id = bundle["bundle"]  # owner/bundle id: the audit log's subject
        if bundle["outcome"] == "delivered":
            entry = recorded.get(f"bundle_completed:{bundle_id}")
            digest_field, now = "result_manifest_sha256", current.get(bundle_id, {}).get("result_manifest")
        elif bundle["outcome"] == "quarantined":
            entry = recorded.get(f"bundle_quarantined:{bundle_id}")
            digest_field, now = "reason_sha256", current.get(bundle_id, {}).get("quarantine_record")
        else:
            continue
        if entry is None:
            check.failures.append(f"bundle {bundle_id} was {bundle['outcome']} but the audit log has no record of it")
        elif entry.get(digest_field) != now and not erased(check, bundle):
            what = "result manifest" if digest_field.startswith("result") else "quarantine record"
            check.failures.append(
                f"bundle {bundle_id}: its {what} was altered after it was written (sha256 now {now}, "
                f"audit record {entry['seq']} says {entry.get(digest_field)})"
            )
    return check
