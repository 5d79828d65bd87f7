"""``fhe-deploy status``: the deployment's dashboard from the command line, and its alarms.

The figures are the dashboard's own (infrastructure/product/monitoring.yaml): the deployed dashboard is read back
(``GetDashboard``) and each of its metrics, with the statistic and period its widget shows, is read from
CloudWatch over the last hours, so the command and the dashboard never disagree. A widget's ``SEARCH`` expression
(one series per served version) is expanded with ``ListMetrics``: the metrics of its namespace and name whose
dimensions are the expression's and whose values hold its search terms. Alarms: every alarm of the deployment
(``<prefix>-…``) and of its served versions (``<endpoint>-v…``), those in ALARM first.
"""

from __future__ import annotations

import json
import math
import re
import shlex
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from common import aws
from common.stack_outputs import DeploymentNotFound, read_outputs
from infrastructure.templates import PRODUCT, SERVED_VERSION, source

MAX_HOURS = 15 * 24.0  # CloudWatch keeps one-minute data for 15 days
MAX_DATAPOINTS = 1440  # GetMetricStatistics answers at most this many per call
ALARM = "AWS::CloudWatch::Alarm"
SEARCH = re.compile(r"^SEARCH\('\{(?P<schema>[^}]*)\}\s*(?P<terms>.*)',\s*'(?P<stat>\w+)',\s*(?P<period>\d+)\)$")


@dataclass(frozen=True)
class Series:
    """One line of a dashboard widget: a metric, its dimensions, and how the widget aggregates it."""

    widget: str
    label: str
    namespace: str
    metric: str
    dimensions: tuple[tuple[str, str], ...]
    stat: str
    period: int


def widget_series(body: dict[str, Any], cloudwatch: Any) -> list[Series]:
    """Every series of the dashboard's metric widgets, in the dashboard's order (``"."`` repeats the row above's
    value, as the dashboard's own syntax does)."""
    found: list[Series] = []
    for widget in body.get("widgets", []):
        properties = widget.get("properties") or {}
        if widget.get("type") != "metric":
            continue
        title, stat, period = str(properties.get("title", "")), str(properties.get("stat", "Average")), 300
        period = int(properties.get("period", period))
        previous: list[str] = []
        for row in properties.get("metrics", []):
            options = row[-1] if row and isinstance(row[-1], dict) else {}
            if "expression" in options:
                found += _searched(title, options, cloudwatch)
                continue
            values = [str(v) for v in (row[:-1] if options else row)]
            values = [previous[i] if v == "." and i < len(previous) else v for i, v in enumerate(values)]
            previous = values
            namespace, metric, pairs = values[0], values[1], values[2:]
            dimensions = tuple(zip(pairs[::2], pairs[1::2], strict=False))
            label = str(options.get("label") or f"{metric} {' '.join(v for _, v in dimensions)}".strip())
            found.append(Series(title, label, namespace, metric, dimensions, str(options.get("stat", stat)), period))
    return found


def _searched(title: str, options: dict[str, Any], cloudwatch: Any) -> list[Series]:
    """The series a widget's SEARCH expression finds now (a form other than the dashboard's own is shown as none)."""
    match = SEARCH.match(str(options["expression"]).strip())
    if match is None:
        return []
    namespace, *names = [part.strip() for part in match["schema"].split(",")]
    terms = shlex.split(match["terms"])
    metric = next((t.split("=", 1)[1] for t in terms if t.startswith("MetricName=")), None)
    words = [t for t in terms if not t.startswith("MetricName=")]
    found = []
    for page in cloudwatch.get_paginator("list_metrics").paginate(
        Namespace=namespace, **({"MetricName": metric} if metric else {})
    ):
        for listed in page.get("Metrics", []):
            dimensions = tuple((d["Name"], d["Value"]) for d in listed.get("Dimensions", []))
            if sorted(name for name, _ in dimensions) != sorted(names):
                continue
            if not all(any(word in value for _, value in dimensions) for word in words):
                continue
            label = f"{options.get('label', '')} {' '.join(v for _, v in dimensions)}".strip()
            found.append(
                Series(title, label, namespace, listed["MetricName"], dimensions, match["stat"], int(match["period"]))
            )
    return sorted(found, key=lambda s: s.label)


def figure(cloudwatch: Any, series: Series, since: datetime, until: datetime) -> dict[str, Any]:
    """The series over [since, until): its newest value (the widget's statistic over one period), and for a Sum the
    total of the whole window; None where CloudWatch has no data."""
    window = (until - since).total_seconds()
    # The widget's period, or a multiple of 60 s long enough that the window fits one call's datapoints.
    period = max(series.period, math.ceil(window / MAX_DATAPOINTS / 60) * 60)
    answer = cloudwatch.get_metric_statistics(
        Namespace=series.namespace,
        MetricName=series.metric,
        Dimensions=[{"Name": name, "Value": value} for name, value in series.dimensions],
        StartTime=since,
        EndTime=until,
        Period=period,
        Statistics=[series.stat],
    )
    points = sorted(answer.get("Datapoints", []), key=lambda p: p["Timestamp"])
    values = [float(p[series.stat]) for p in points if series.stat in p]
    total: float | None = None
    if series.stat == "Sum":
        total = sum(values)
    elif series.stat == "Maximum" and values:
        total = max(values)
    return {**asdict(series), "dimensions": dict(series.dimensions), "latest": values[-1] if values else None,
            "window": total}  # fmt: skip


def alarm_names(prefix: str, family: str) -> re.Pattern[str]:
    """The names of the deployment's alarms, as its templates name them: the product stack's ``<prefix>-…`` and
    each served version's ``<family>-v<version>-…`` (and no other deployment's, whose prefix may start the same)."""

    def suffixes(template: Path, variable: str) -> list[str]:
        found = []
        for spec in source(template)["Resources"].values():
            name = spec.get("Properties", {}).get("AlarmName") if spec.get("Type") == ALARM else None
            if isinstance(name, dict) and str(name.get("Fn::Sub", "")).startswith(f"${{{variable}}}-"):
                found.append(re.escape(str(name["Fn::Sub"]).removeprefix(f"${{{variable}}}-")))
        return found

    product = "|".join(suffixes(PRODUCT, "Prefix"))
    version = "|".join(suffixes(SERVED_VERSION, "EndpointName"))
    return re.compile(rf"^(?:{re.escape(prefix)}-(?:{product})|{re.escape(family)}-v[0-9]+-(?:{version}))$")


def alarms(cloudwatch: Any, prefixes: list[str], names: re.Pattern[str]) -> list[dict[str, Any]]:
    """The alarms whose names start with one of ``prefixes`` and match ``names``: name, state, reason, metric;
    those in ALARM first."""
    found: dict[str, dict[str, Any]] = {}
    for prefix in prefixes:
        for page in cloudwatch.get_paginator("describe_alarms").paginate(AlarmNamePrefix=prefix):
            for alarm in page.get("MetricAlarms", []):
                if not names.match(alarm["AlarmName"]):
                    continue
                found[alarm["AlarmName"]] = {
                    "name": alarm["AlarmName"],
                    "state": alarm["StateValue"],
                    "reason": alarm.get("StateReason", ""),
                    "metric": f"{alarm.get('Namespace')} {alarm.get('MetricName')}",
                }
    return sorted(found.values(), key=lambda a: (a["state"] != "ALARM", a["name"]))


def status(prefix: str, hours: float = 3.0, now: datetime | None = None) -> dict[str, Any]:
    """The deployment's dashboard figures over the last ``hours`` and its alarms."""
    outputs = read_outputs(prefix)
    if "DashboardName" not in outputs:
        raise DeploymentNotFound(f"deployment {prefix} has no dashboard: update it (fhe-deploy up)")
    cloudwatch = aws.client("cloudwatch")
    body = json.loads(cloudwatch.get_dashboard(DashboardName=outputs["DashboardName"])["DashboardBody"])
    until = now or datetime.now(tz=UTC)
    since = until - timedelta(hours=hours)
    figures = [figure(cloudwatch, series, since, until) for series in widget_series(body, cloudwatch)]
    return {
        "dashboard": outputs["DashboardName"],
        "window": {"since": since.isoformat(), "until": until.isoformat()},
        "figures": figures,
        "alarms": alarms(
            cloudwatch,
            [f"{prefix}-", f"{outputs['EndpointName']}-v"],
            alarm_names(prefix, outputs["EndpointName"]),
        ),
    }


def _number(value: float | None) -> str:
    return "no data" if value is None else f"{value:g}"


def describe(report: dict[str, Any]) -> str:
    """The report as a reader wants it: the alarms, then each widget's figures."""
    lines = [f"dashboard {report['dashboard']}, {report['window']['since']} to {report['window']['until']}"]
    lines.append("alarms:")
    lines += [f"  {a['state']:17} {a['name']}  ({a['metric']})" for a in report["alarms"]] or ["  (none)"]
    title = None
    for item in report["figures"]:
        if item["widget"] != title:
            title = item["widget"]
            lines.append(f"{title}:")
        window = "" if item["window"] is None else f", {item['stat'].lower()} over the window {_number(item['window'])}"
        lines.append(
            f"  {item['label']:40} latest {_number(item['latest'])} ({item['stat']}/{item['period']} s){window}"
        )
    return "\n".join(lines)
