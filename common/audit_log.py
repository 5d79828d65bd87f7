"""The audit log: an append-only, hash-chained list of what happened to bundles and model packages.

One record per event (a bundle delivered or quarantined, an approval decision), kept in a DynamoDB table under
one partition (``chain``) with a gapless sequence number (``seq``). Each record's digest covers its body and
the digest of the record before it, so changing, removing or reordering any record breaks every digest after
it; the audit command recomputes the chain and names the first record that does not fit. The recorder Lambda
writes with a condition on the sequence number, so two writers can never fork the chain.

Why a chain and not S3 Object Lock: DynamoDB has no write-once mode, and a chain is checkable by anyone who
can read the table, on any backend.

A chain alone can be rewritten consistently by whoever can write the table: from any record on, recompute every
digest. So the recorder also signs each record (its sequence number and digest) with an asymmetric KMS key that
only the recorder's role may sign with; the audit report verifies every signature with the key's public key. A
rewritten record cannot carry a valid signature, and since each digest covers every record before it, the head's
signature vouches for the whole chain.

What the recorder accepts: an event whose detail type belongs to its source (``EVENT_TYPES``), checked against
the service that did the thing (lambdas/record.py). An event it cannot verify is not dropped: a
``refused_event`` record says which source and detail type it claimed and why it was refused, never its detail.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

CHAIN = "audit"  # the partition key value every record lives under
GENESIS = "0" * 64  # the "previous digest" of the first record

# What the chain records, by the EventBridge detail types it is fed.
BUNDLE_COMPLETED = "Bundle Completed"
BUNDLE_QUARANTINED = "Bundle Quarantined"
APPROVAL_DECISION = "Model Package Approval"  # published by the product's approve command
SAGEMAKER_PACKAGE_CHANGE = "SageMaker Model Package State Change"  # what SageMaker itself sends on AWS
BUNDLE_EVENT_SOURCE = "fhe.batch-inference"  # the workflow's Assemble and Quarantine functions
REGISTRY_EVENT_SOURCE = "fhe.model-registry"  # ML ops' approve, deploy and retire commands
SAGEMAKER_EVENT_SOURCE = "aws.sagemaker"  # SageMaker itself (no one can put events of an aws.* source)
VERSION_SERVED = "Model Version Served"  # a version's endpoint deployed (fhe-pipeline deploy)
VERSION_RETIRED = "Model Version Retired"  # and deleted (fhe-pipeline retire)
SERVING_KINDS = {VERSION_SERVED: "version_served", VERSION_RETIRED: "version_retired"}
OWNER_EVENT_SOURCE = "fhe.owners"  # fhe-deploy owner remove: a batch owner's data exported or erased as it leaves
OWNER_EXPORTED = "Owner Data Exported"
OWNER_ERASED = "Owner Data Erased"
OFFBOARDING_KINDS = {OWNER_EXPORTED: "owner_exported", OWNER_ERASED: "owner_erased"}
BUNDLE_KINDS = {BUNDLE_COMPLETED: "bundle_completed", BUNDLE_QUARANTINED: "bundle_quarantined"}
REFUSED_EVENT = "refused_event"  # the kind of record that says an event was refused, and why

# Which detail types each source may send: the recorder refuses any other pair, and each role's events:PutEvents
# grant is conditioned on its own pairs (tests/unit/test_policies.py holds the templates to this table).
EVENT_TYPES: dict[str, frozenset[str]] = {
    BUNDLE_EVENT_SOURCE: frozenset({BUNDLE_COMPLETED, BUNDLE_QUARANTINED}),
    REGISTRY_EVENT_SOURCE: frozenset({APPROVAL_DECISION, VERSION_SERVED, VERSION_RETIRED}),
    SAGEMAKER_EVENT_SOURCE: frozenset({SAGEMAKER_PACKAGE_CHANGE}),
    OWNER_EVENT_SOURCE: frozenset(OFFBOARDING_KINDS),
}
APPROVAL_TYPES = frozenset({APPROVAL_DECISION, SAGEMAKER_PACKAGE_CHANGE})

# The fields of a model package kept in an approval record: what was decided, when, and who decided (the
# registry's LastModifiedBy, as one name); nothing else. All of them are read from the registry, never from the
# event that announced the decision.
APPROVAL_FIELDS = (
    "ModelPackageArn",
    "ModelPackageGroupName",
    "ModelPackageVersion",
    "ModelApprovalStatus",
    "ApprovalDescription",
    "LastModifiedTime",
)
DECIDED_BY = "decided_by"

# How records are signed: ECDSA on P-256 with SHA-256 over ``signed_message`` (KMS hashes the message itself, so
# any backend's Sign and an offline verification with the public key agree).
SIGNING_KEY_SPEC = "ECC_NIST_P256"
SIGNING_ALGORITHM = "ECDSA_SHA_256"
_SIGNED_PREFIX = "fhe-audit-log/v1"


def canonical(body: dict[str, Any]) -> str:
    """The one serialization a digest is computed over."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def link_digest(previous: str, body_json: str) -> str:
    return hashlib.sha256(f"{previous}\n{body_json}".encode()).hexdigest()


@dataclass(frozen=True)
class AuditRecord:
    seq: int
    body_json: str  # the canonical body, exactly as it was chained
    previous: str
    digest: str
    signature: str | None = None  # base64 of the KMS signature of ``signed_message``
    signing_key: str | None = None  # the ARN of the key that made it, as KMS reported it

    @property
    def body(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.body_json)
        return data

    @property
    def signed_message(self) -> bytes:
        """What the signature covers: the record's place in the chain and its digest (which covers its body and,
        through the previous digest, every record before it)."""
        return f"{_SIGNED_PREFIX}\n{self.seq}\n{self.digest}".encode()

    @classmethod
    def next_after(cls, last: AuditRecord | None, body: dict[str, Any]) -> AuditRecord:
        previous = last.digest if last else GENESIS
        body_json = canonical(body)
        return cls((last.seq if last else 0) + 1, body_json, previous, link_digest(previous, body_json))

    def signed(self, signature: bytes, signing_key: str) -> AuditRecord:
        return replace(self, signature=base64.b64encode(signature).decode(), signing_key=signing_key)

    def to_item(self) -> dict[str, Any]:
        """The DynamoDB item (resource-level types)."""
        item: dict[str, Any] = {
            "chain": CHAIN,
            "seq": self.seq,
            "body": self.body_json,
            "previous": self.previous,
            "digest": self.digest,
        }
        if self.signature is not None:
            item["signature"] = self.signature
            item["signing_key"] = self.signing_key
        return item

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> AuditRecord:
        signature, key = item.get("signature"), item.get("signing_key")
        return cls(
            int(item["seq"]),
            str(item["body"]),
            str(item["previous"]),
            str(item["digest"]),
            str(signature) if signature is not None else None,
            str(key) if key is not None else None,
        )


def chain_problems(records: Iterable[AuditRecord]) -> list[str]:
    """Every break in the chain, in order; empty when each record follows the one before it unaltered."""
    problems: list[str] = []
    expected_seq, expected_previous = 1, GENESIS
    for record in sorted(records, key=lambda r: r.seq):
        if record.seq != expected_seq:
            problems.append(f"record {expected_seq} is missing (the next one is {record.seq})")
        if record.previous != expected_previous:
            problems.append(f"record {record.seq} does not follow the record before it (previous digest differs)")
        if link_digest(record.previous, record.body_json) != record.digest:
            problems.append(f"record {record.seq} was altered (its digest does not match its content)")
        expected_seq, expected_previous = record.seq + 1, record.digest
    return problems


def read_chain(table: Any) -> Iterator[AuditRecord]:
    """Every record of the chain, oldest first (``table`` is a boto3 DynamoDB Table resource)."""
    query: dict[str, Any] = {
        "KeyConditionExpression": "#c = :c",
        "ExpressionAttributeNames": {"#c": "chain"},
        "ExpressionAttributeValues": {":c": CHAIN},
        "ConsistentRead": True,
    }
    while True:
        page = table.query(**query)
        for item in page.get("Items", []):
            yield AuditRecord.from_item(item)
        if "LastEvaluatedKey" not in page:
            return
        query["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def last_records(table: Any, count: int) -> list[AuditRecord]:
    """The newest ``count`` records of the chain, newest first."""
    page = table.query(
        KeyConditionExpression="#c = :c",
        ExpressionAttributeNames={"#c": "chain"},
        ExpressionAttributeValues={":c": CHAIN},
        ScanIndexForward=False,
        Limit=count,
        ConsistentRead=True,
    )
    return [AuditRecord.from_item(item) for item in page.get("Items", [])]


def last_record(table: Any) -> AuditRecord | None:
    newest = last_records(table, 1)
    return newest[0] if newest else None


def user_identity(user_context: Any) -> str:
    """A SageMaker UserContext (``CreatedBy``, ``LastModifiedBy``) as one name: the IAM ARN, else the Studio user
    profile."""
    context: dict[str, Any] = user_context if isinstance(user_context, dict) else {}
    iam = context.get("IamIdentity")
    arn = iam.get("Arn") if isinstance(iam, dict) else None
    return str(arn or context.get("UserProfileName") or context.get("UserProfileArn") or "unknown")


def approval_body(package: dict[str, Any], *, source: str, event_id: str, time: str) -> dict[str, Any]:
    """An approval record's body from the registry's description of the package (DescribeModelPackage): the
    decision as SageMaker holds it, and who made it as SageMaker recorded the call."""
    detail = {k: package[k] for k in APPROVAL_FIELDS if k in package}
    modified = detail.get("LastModifiedTime")
    if isinstance(modified, datetime):
        detail["LastModifiedTime"] = modified.isoformat()
    detail[DECIDED_BY] = user_identity(package.get("LastModifiedBy") or package.get("CreatedBy"))
    return {
        "kind": "approval",
        "source": source,
        "event_id": event_id,
        "time": time,
        "subject": str(package.get("ModelPackageArn", "")),
        "detail": detail,
    }


MAX_CLAIMED_NAME = 128  # EventBridge's own limit on a detail type; a source may be longer, and is cut here


def refused_body(*, source: str, detail_type: str, event_id: str, time: str, reason: str) -> dict[str, Any]:
    """The record of an event the recorder refused: what it claimed to be and why it was refused; nothing of its
    detail (whoever sent it chose that content)."""
    return {
        "kind": REFUSED_EVENT,
        "source": source[:MAX_CLAIMED_NAME],
        "event_id": event_id[:MAX_CLAIMED_NAME],
        "time": time[:MAX_CLAIMED_NAME],
        "subject": detail_type[:MAX_CLAIMED_NAME],
        "detail": {"reason": reason},
    }
