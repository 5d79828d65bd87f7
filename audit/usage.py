"""Usage and cost per batch owner over a time window: what each owner used of the shared endpoints, and what it costs.

Read from records the services made, never from what an owner or an operator says:
- the audit log: each delivered bundle's owner, samples, shards and serving time (its usage record, the sum of the
  seconds each shard's serving instance reported: ``common.bundle.usage``), each quarantined bundle's owner and the
  serving time of the shards that ran before it was quarantined (its quarantine record), and each served version's
  endpoint, its instance type and initial instance count (from SageMaker, when it was served) and when it was
  retired;
- the workflow's own history, for the version a quarantined bundle's shards ran on (Validate's plan);
- Application Auto Scaling's record of each endpoint's instance count (``DescribeScalingActivities``).

An endpoint's instance time in the window is the integral of its instance count over the window. It is split among
the owners whose bundles the endpoint served in the window (delivered or quarantined), each owner's share being its
part of the time the endpoint's instances were busy on those bundles' shards; the time between shards (an instance
starting, waiting out its scale-in cooldown) is shared in the same proportions, so the owners' instance seconds add
up to the endpoints' total. Instance time of an endpoint that served no bundle in the window is shown as
unattributed.

What this does not see: a shard that failed on its instance (it reported no time), and the enclave fleet's
instance time (enclave bundles are counted, and their serving seconds shown, but the fleet's EC2 time is not split
here: such an owner's cost is unknown, not zero). A bundle counts in the window its outcome's record falls in.
Application Auto Scaling keeps six weeks of activities: older windows cannot be counted. A version served before
usage was recorded has no instance type on record: its time is counted and attributed, but not priced.
"""

from __future__ import annotations

import csv
import io
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from common.audit_log import AuditRecord
from common.estimate import EstimateError, EstimateTable
from common.model_package import version_endpoint

DESIRED = re.compile(r"desired instance count to (\d+)")
UNATTRIBUTED = "(unattributed)"  # the row of instance time no delivered bundle used
ENCLAVE_FLEET = "(enclave fleet)"  # where enclave bundles were served: its EC2 time is not split here
NAMESPACE, VARIANT = "sagemaker", "AllTraffic"


def _time(text: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except (TypeError, ValueError):
        return None


@dataclass
class EndpointTime:
    """One served version's endpoint: when it existed and its instance count over time."""

    endpoint: str
    instance_type: str | None  # None: served before the audit log recorded it (then its time is not priced)
    created: datetime
    retired: datetime | None
    initial_instances: int
    changes: list[tuple[datetime, int]] = field(default_factory=list)  # (when, the instance count from then on)

    def instance_seconds(self, since: datetime, until: datetime) -> float:
        """The integral of the instance count over [since, until), within the endpoint's life."""
        start, end = max(since, self.created), min(until, self.retired or until)
        if start >= end:
            return 0.0
        count = self.initial_instances
        steps = sorted(self.changes)
        for moment, after in steps:
            if moment <= start:
                count = after
        total, at = 0.0, start
        for moment, after in steps:
            if start < moment < end:
                total += count * (moment - at).total_seconds()
                at, count = moment, after
        return total + count * (end - at).total_seconds()


def endpoint_times(records: Iterable[AuditRecord], scaling: Any, progress: Any = None) -> dict[str, EndpointTime]:
    """Every FHE endpoint the audit log says was served, with its instance count changes from Application Auto
    Scaling (``scaling``: an ``application-autoscaling`` client)."""
    endpoints: dict[str, EndpointTime] = {}
    retired: dict[str, datetime] = {}
    for record in records:
        body = record.body
        detail = body.get("detail") or {}
        kind, name = body.get("kind"), str(detail.get("endpoint"))
        if kind == "version_retired" and (moment := _time(body.get("time"))):
            retired[name] = moment
        elif kind == "version_served" and name not in endpoints:
            created = _time(detail.get("endpoint_created")) or _time(body.get("time"))
            instance_type = detail.get("instance_type")
            if created is not None:
                endpoints[name] = EndpointTime(
                    name,
                    str(instance_type) if instance_type else None,
                    created,
                    None,
                    int(detail.get("initial_instances", 1)),
                )
    for name, endpoint in endpoints.items():
        endpoint.retired = retired.get(name)
        if progress:
            progress(f"instance count of {name}")
        pages = scaling.get_paginator("describe_scaling_activities").paginate(
            ServiceNamespace=NAMESPACE, ResourceId=f"endpoint/{name}/variant/{VARIANT}"
        )
        for activity in (a for page in pages for a in page.get("ScalingActivities", [])):
            match = DESIRED.search(str(activity.get("Description", "")))
            if activity.get("StatusCode") == "Successful" and match:
                moment = activity.get("EndTime") or activity["StartTime"]
                endpoint.changes.append((moment, int(match[1])))
    return endpoints


@dataclass
class OwnerUsage:
    owner: str
    bundles: int = 0  # delivered
    quarantined: int = 0  # quarantined (their shards that ran are counted too)
    samples: int = 0
    shards: int = 0
    serving_seconds: float = 0.0  # the time instances spent on the owner's shards, as they reported it
    fhe_seconds: float = 0.0
    instance_seconds: float = 0.0  # the owner's share of the endpoints' instance time
    cost: float | None = 0.0


def _outcome(record: AuditRecord, since: datetime, until: datetime) -> dict[str, Any] | None:
    """A bundle outcome's record in the window: its detail, with its kind."""
    body = record.body
    moment = _time(body.get("time"))
    if body.get("kind") not in OUTCOMES or moment is None or not since <= moment < until:
        return None
    return {**(body.get("detail") or {}), "kind": body["kind"]}


OUTCOMES = ("bundle_completed", "bundle_quarantined")


def quarantined_executions(records: Iterable[AuditRecord], since: datetime, until: datetime) -> list[str]:
    """The executions of the window's quarantined bundles whose shards had run: the version they ran on is in the
    workflow's history (``usage``'s ``endpoint_of``)."""
    found = []
    for record in records:
        detail = _outcome(record, since, until)
        if detail and detail["kind"] == "bundle_quarantined" and detail.get("usage") and detail.get("execution"):
            found.append(str(detail["execution"]))
    return found


def usage(
    records: list[AuditRecord],
    endpoints: dict[str, EndpointTime],
    family: str,
    since: datetime,
    until: datetime,
    prices: EstimateTable | None = None,
    endpoint_of: Mapping[str, str | None] | None = None,
) -> dict[str, Any]:
    """Usage per owner in [since, until), its instance time attributed, and the reconciliation against the
    endpoints' total instance time. ``family`` is the deployment's endpoint family (``<family>-v<version>``);
    ``endpoint_of`` names the endpoint a quarantined bundle's execution ran its shards on."""
    owners: dict[str, OwnerUsage] = {}
    busy: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))  # endpoint → owner → seconds
    for record in records:
        detail = _outcome(record, since, until)
        if detail is None:
            continue
        owner = str(detail.get("owner"))
        row = owners.setdefault(owner, OwnerUsage(owner))
        served = detail.get("usage") or {}
        serving = float(served.get("serving_seconds") or 0.0)
        row.serving_seconds += serving
        row.fhe_seconds += float(served.get("fhe_seconds") or 0.0)
        if detail["kind"] == "bundle_completed":
            row.bundles += 1
            row.samples += int(detail.get("samples") or 0)
            row.shards += int(detail.get("shards") or 0)
            version = str(detail.get("model_package_arn", "")).rsplit("/", 1)[-1]
            served_by = version_endpoint(family, int(version)) if version.isdigit() else ""
        else:
            row.quarantined += 1
            row.shards += int(served.get("shards") or 0)
            served_by = (endpoint_of or {}).get(str(detail.get("execution"))) or ""
        if served_by not in endpoints:  # the enclave fleet's, whose EC2 time is not split here: its cost unknown
            served_by = ENCLAVE_FLEET
            if serving > 0:
                row.cost = None
        busy[served_by][owner] += serving
    rows_by_endpoint: list[dict[str, Any]] = []
    unattributed = OwnerUsage(UNATTRIBUTED)
    for name, timeline in sorted(endpoints.items()):
        seconds = timeline.instance_seconds(since, until)
        if seconds <= 0:
            continue
        price = _hourly(prices, timeline.instance_type) if timeline.instance_type else None
        cost = None if price is None else seconds / 3600 * price
        shares = busy.get(name, {})
        total_busy = sum(shares.values())
        rows_by_endpoint.append(
            {
                "endpoint": name,
                "instance_type": timeline.instance_type,
                "instance_seconds": round(seconds, 3),
                "busy_seconds": round(total_busy, 3),
                "hourly_price": price,
                "cost": None if cost is None else round(cost, 6),
            }
        )
        if total_busy <= 0:
            _charge(unattributed, seconds, cost)
            continue
        for owner, owner_busy in shares.items():
            part = owner_busy / total_busy
            _charge(owners[owner], seconds * part, None if cost is None else cost * part)
    total = sum(float(row["instance_seconds"]) for row in rows_by_endpoint)
    table = sorted(owners.values(), key=lambda row: row.owner)
    if unattributed.instance_seconds > 0:
        table.append(unattributed)
    attributed = sum(row.instance_seconds for row in table)
    return {
        "window": {"since": since.isoformat(), "until": until.isoformat()},
        "currency": prices.currency if prices else None,
        "prices_as_of": prices.as_of if prices else None,
        "owners": [_rounded(row) for row in table],
        "endpoints": rows_by_endpoint,
        "enclave_fleet_serving_seconds": round(sum(busy.get(ENCLAVE_FLEET, {}).values()), 3),
        "reconciliation": {
            "endpoint_instance_seconds": round(total, 3),
            "attributed_instance_seconds": round(attributed, 3),
            "difference": round(attributed - total, 6),
        },
    }


def _hourly(prices: EstimateTable | None, instance_type: str) -> float | None:
    if prices is None:
        return None
    try:
        return prices.hourly(instance_type)
    except EstimateError:
        return None


def _charge(row: OwnerUsage, seconds: float, cost: float | None) -> None:
    row.instance_seconds += seconds
    row.cost = None if row.cost is None or cost is None else row.cost + cost


def _rounded(row: OwnerUsage) -> dict[str, Any]:
    data = asdict(row)
    for name in ("serving_seconds", "fhe_seconds", "instance_seconds"):
        data[name] = round(data[name], 3)
    data["cost"] = None if row.cost is None else round(row.cost, 6)
    return data


CSV_FIELDS = tuple(OwnerUsage.__dataclass_fields__)


def as_csv(report: dict[str, Any]) -> str:
    """The owners' rows as CSV (one header line, one line per owner, the unattributed row last), for billing."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=[*CSV_FIELDS, "currency", "since", "until"], lineterminator="\n")
    writer.writeheader()
    for row in report["owners"]:
        writer.writerow(
            {
                **row,
                "currency": report["currency"],
                "since": report["window"]["since"],
                "until": report["window"]["until"],
            }
        )
    return out.getvalue()
