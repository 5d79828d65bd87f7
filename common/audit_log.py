"""The audit log: an append-only, hash-chained list of what happened to bundles and model packages.

One record per event (a bundle delivered or quarantined, an approval decision), kept in a DynamoDB table under
one partition (``chain``) with a gapless sequence number (``seq``). Each record's digest covers its body and
the digest of the record before it, so changing, removing or reordering any record breaks every digest after
it; the audit command recomputes the chain and names the first record that does not fit. The recorder Lambda
writes with a condition on the sequence number, so two writers can never fork the chain.

Why a chain and not S3 Object Lock: DynamoDB has no write-once mode, and a chain is checkable by anyone who
can read the table, on any backend.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

CHAIN = "audit"  # the partition key value every record lives under
GENESIS = "0" * 64  # the "previous digest" of the first record

# What the chain records, by the EventBridge detail types it is fed.
BUNDLE_COMPLETED = "Bundle Completed"
BUNDLE_QUARANTINED = "Bundle Quarantined"
APPROVAL_DECISION = "Model Package Approval"  # published by the product's approve command
SAGEMAKER_PACKAGE_CHANGE = "SageMaker Model Package State Change"  # what SageMaker itself sends on AWS
REGISTRY_EVENT_SOURCE = "fhe.model-registry"
VERSION_SERVED = "Model Version Served"  # a version's endpoint deployed (fhe-pipeline deploy)
VERSION_RETIRED = "Model Version Retired"  # and deleted (fhe-pipeline retire)
SERVING_KINDS = {VERSION_SERVED: "version_served", VERSION_RETIRED: "version_retired"}

# The fields of a model package kept in an approval record: what was decided, by whom, when; nothing else.
APPROVAL_FIELDS = (
    "ModelPackageArn",
    "ModelPackageGroupName",
    "ModelPackageVersion",
    "ModelApprovalStatus",
    "ApprovalDescription",
    "LastModifiedTime",
    "LastModifiedBy",
    "decided_by",
)


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

    @property
    def body(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.body_json)
        return data

    @classmethod
    def next_after(cls, last: AuditRecord | None, body: dict[str, Any]) -> AuditRecord:
        previous = last.digest if last else GENESIS
        body_json = canonical(body)
        return cls((last.seq if last else 0) + 1, body_json, previous, link_digest(previous, body_json))

    def to_item(self) -> dict[str, Any]:
        """The DynamoDB item (resource-level types)."""
        return {
            "chain": CHAIN,
            "seq": self.seq,
            "body": self.body_json,
            "previous": self.previous,
            "digest": self.digest,
        }

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> AuditRecord:
        return cls(int(item["seq"]), str(item["body"]), str(item["previous"]), str(item["digest"]))


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


def last_record(table: Any) -> AuditRecord | None:
    page = table.query(
        KeyConditionExpression="#c = :c",
        ExpressionAttributeNames={"#c": "chain"},
        ExpressionAttributeValues={":c": CHAIN},
        ScanIndexForward=False,
        Limit=1,
        ConsistentRead=True,
    )
    items = page.get("Items", [])
    return AuditRecord.from_item(items[0]) if items else None


def approval_body(detail: dict[str, Any], *, source: str, event_id: str, time: str) -> dict[str, Any]:
    """An approval record's body from either event shape (the product's, or SageMaker's own)."""
    return {
        "kind": "approval",
        "source": source,
        "event_id": event_id,
        "time": time,
        "subject": str(detail.get("ModelPackageArn", "")),
        "detail": {k: detail[k] for k in APPROVAL_FIELDS if k in detail},
    }
