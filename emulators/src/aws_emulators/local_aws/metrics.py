"""CloudWatch metrics that AWS services publish and ministack does not, and alarms evaluated on their own metric.

- Step Functions: ``AWS/States`` ``ExecutionsStarted``, ``ExecutionsSucceeded``, ``ExecutionsFailed``,
  ``ExecutionsTimedOut`` and ``ExecutionsAborted`` per ``StateMachineArn``, one datum per top-level execution status
  change (a Distributed Map's child executions are not the state machine's own executions).
- Lambda: CloudWatch Logs turns a function's log line in the embedded metric format (a JSON object whose ``_aws``
  key holds ``CloudWatchMetrics``: namespace, dimension sets, metric names) into metric data, as AWS does for every
  log line a function writes; ministack only stored the line.
- Alarms: ministack evaluated an alarm over every datum of its namespace and metric name, whatever their dimensions,
  and as one statistic over all its evaluation periods, so an alarm on one queue or one state machine saw every
  other's data, and an alarm needing fifteen breaching minutes fired on one. Here an alarm is evaluated on its own
  metric, period by period, with ``DatapointsToAlarm`` and ``TreatMissingData``, as CloudWatch documents; data
  recorded here evaluates the alarms at once, as PutMetricData does in ministack.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)

# ministack's modules and the functions wrapped here, set by install(): this module imports without ministack, so
# its parser is tested anywhere.
cloudwatch: Any = None
_ministack: dict[str, Any] = {}

EXECUTION_METRICS = {
    "RUNNING": "ExecutionsStarted",
    "SUCCEEDED": "ExecutionsSucceeded",
    "FAILED": "ExecutionsFailed",
    "TIMED_OUT": "ExecutionsTimedOut",
    "ABORTED": "ExecutionsAborted",
}
MAX_EMF_LINE = 256 * 1024  # CloudWatch Logs' largest log event
MAX_METRICS_PER_DIRECTIVE = 100  # the embedded metric format's limit per directive


def record(namespace: str, name: str, value: float, unit: str, dimensions: dict[str, str]) -> None:
    """One datum, as a service publishes it, then the alarms evaluated on it."""
    cloudwatch.record_metric(namespace, name, value, unit, dimensions)
    cloudwatch._evaluate_all_alarms()


def execution_status_changed(execution: dict[str, Any]) -> None:
    _ministack["status_event"](execution)
    name = EXECUTION_METRICS.get(str(execution.get("status")))
    machine, arn = str(execution.get("stateMachineArn", "")), str(execution.get("executionArn", ""))
    top_level = "/" not in arn.split(":execution:", 1)[-1].split(":", 1)[0]
    if name and machine and top_level:
        record("AWS/States", name, 1.0, "Count", {"StateMachineArn": machine})


def embedded_metrics(line: str) -> Iterator[tuple[str, str, float, str, dict[str, str]]]:
    """(namespace, metric, value, unit, dimensions) of each datum a log line in the embedded metric format carries;
    nothing for any other line. A value may be a list (several data of one metric in one line)."""
    text = line.strip()
    if not text.startswith("{") or '"_aws"' not in text or len(text) > MAX_EMF_LINE:
        return
    try:
        event = json.loads(text)
    except ValueError:
        return
    meta = event.get("_aws") if isinstance(event, dict) else None
    if not isinstance(meta, dict) or not isinstance(meta.get("CloudWatchMetrics"), list):
        return
    for directive in meta["CloudWatchMetrics"]:
        if not isinstance(directive, dict) or not isinstance(directive.get("Namespace"), str):
            continue
        dimension_sets = directive.get("Dimensions") or [[]]
        for metric in (directive.get("Metrics") or [])[:MAX_METRICS_PER_DIRECTIVE]:
            name = metric.get("Name") if isinstance(metric, dict) else None
            values = event.get(name) if isinstance(name, str) else None
            values = values if isinstance(values, list) else [values]
            for dimension_set in dimension_sets:
                if not isinstance(dimension_set, list):
                    continue
                dimensions = {str(d): str(event[d]) for d in dimension_set if d in event}
                for value in values:
                    if isinstance(value, int | float) and not isinstance(value, bool):
                        yield (
                            directive["Namespace"],
                            str(name),
                            float(value),
                            str(metric.get("Unit", "None")),
                            dimensions,
                        )


def lambda_logs(
    func: dict[str, Any], request_id: str, log_text: str, error: bool, duration_ms: int, **options: Any
) -> None:
    _ministack["lambda_logs"](func, request_id, log_text, error, duration_ms, **options)
    try:
        for datum in (d for line in (log_text or "").splitlines() for d in embedded_metrics(line)):
            record(*datum)
    except Exception:  # metrics never fail the invocation whose log carried them
        log.exception("embedded metrics of a function's log could not be recorded")


COMPARISONS = {
    "GreaterThanOrEqualToThreshold": lambda value, threshold: value >= threshold,
    "GreaterThanThreshold": lambda value, threshold: value > threshold,
    "LessThanThreshold": lambda value, threshold: value < threshold,
    "LessThanOrEqualToThreshold": lambda value, threshold: value <= threshold,
}


def evaluate_alarm(alarm: dict[str, Any]) -> None:
    """``alarm`` evaluated as CloudWatch does, on the data of its own metric (namespace, name and dimensions): its
    last ``EvaluationPeriods`` periods of ``Period`` seconds each give one value each (the statistic over the period's
    data); ALARM when at least ``DatapointsToAlarm`` of them (default: all) breach the threshold, OK otherwise. A
    period without data is left out (``missing``, ``ignore``), breaches (``breaching``) or does not
    (``notBreaching``); with no value at all the state stays. A change is recorded and its actions run as ministack
    does."""
    if not alarm.get("Namespace") or not alarm.get("MetricName"):
        return
    compare = COMPARISONS.get(str(alarm.get("ComparisonOperator")))
    if compare is None:
        return
    dimensions = cloudwatch._dims_key({d["Name"]: d.get("Value", "") for d in alarm.get("Dimensions") or []})
    points = list(cloudwatch._metrics.get((alarm["Namespace"], alarm["MetricName"], dimensions)) or [])
    period, periods = int(alarm.get("Period", 60)), int(alarm.get("EvaluationPeriods", 1))
    needed = int(alarm.get("DatapointsToAlarm") or periods)
    statistic = alarm.get("ExtendedStatistic") or alarm.get("Statistic") or "Average"
    threshold, now = float(alarm.get("Threshold", 0)), time.time()
    verdicts: list[bool] = []
    for back in range(periods):
        start, end = now - (back + 1) * period, now - back * period
        data = [point for point in points if start <= point["Timestamp"] < end]
        value = cloudwatch._stat_value(cloudwatch._calc_stats(data), statistic, data) if data else None
        if value is not None:
            verdicts.append(compare(value, threshold))
        elif alarm.get("TreatMissingData") in ("breaching", "notBreaching"):
            verdicts.append(alarm["TreatMissingData"] == "breaching")
    if not verdicts:
        return
    state = "ALARM" if sum(verdicts) >= min(needed, periods) else "OK"
    before = alarm["StateValue"]
    if state == before:
        return
    reason = (
        f"Threshold Crossed: {sum(verdicts)} of the last {periods} periods of {period} s breached "
        f"({statistic} {alarm['ComparisonOperator']} {threshold:g})"
    )
    alarm.update(StateValue=state, StateReason=reason, StateUpdatedTimestamp=int(time.time()))
    cloudwatch._record_history(alarm["AlarmName"], before, state, reason)
    cloudwatch._dispatch_alarm_actions(alarm, before, state, reason)
    cloudwatch._evaluate_parent_alarms(alarm)


def install() -> None:
    global cloudwatch
    from ministack.services import cloudwatch as ministack_cloudwatch
    from ministack.services import lambda_svc
    from ministack.services import stepfunctions as sfn

    cloudwatch = ministack_cloudwatch
    _ministack.update(status_event=sfn._emit_execution_status_event, lambda_logs=lambda_svc._emit_lambda_logs)
    sfn._emit_execution_status_event = execution_status_changed  # looked up at each status change
    lambda_svc._emit_lambda_logs = lambda_logs  # looked up after each invocation
    cloudwatch._evaluate_alarm = evaluate_alarm  # looked up by every evaluation
