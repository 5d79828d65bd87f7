"""AWS Step Functions' limits, enforced on the local stack's execution histories, which the local Step Functions
does not enforce itself: a state's input or output (and a task's parameters or result) at most 256 KiB, an
execution's history at most 25,000 events. Past either, AWS fails the execution with
``States.DataLimitExceeded`` or ends it, and no Catch can save the bundle; here a test fails instead.

A Distributed Map's child executions have histories of their own: they are read too.

The local Step Functions records fewer events than AWS: no ``TaskStarted`` or ``TaskSubmitted``, nothing of a
Map iteration but its task's ``TaskScheduled`` and ``TaskSucceeded``, no map run events, and of a Distributed
Map's child execution only its tasks' scheduled and ended events. On such a history the guard counts what AWS
would record, from above: per task outside a Map two more events (started, submitted), and two more (state
entered, exited) where the history has no state events; per task inside an inline Map eight in all (iteration
started, state entered, scheduled, started, submitted, succeeded, state exited, iteration succeeded) where two
were recorded; per Distributed Map two (map run started, ended); per child execution two (started, ended)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

MAX_PAYLOAD_BYTES = 256 * 1024  # state input/output, task parameters and results (UTF-8)
MAX_HISTORY_EVENTS = 25_000
_PAYLOAD_FIELDS = ("input", "output", "parameters", "result")


@dataclass
class Measure:
    """One execution's history as the limits see it."""

    execution_arn: str
    events: int = 0  # as recorded
    aws_events: int = 0  # as AWS would record them (the recorded count where the history is complete)
    largest_payload: int = 0
    largest_at: str = ""  # the event type and state that carried the largest payload
    violations: list[str] = field(default_factory=list)


def _payloads(event: dict[str, Any]) -> Iterator[tuple[str, int]]:
    for key, details in event.items():
        if key.endswith("EventDetails") and isinstance(details, dict):
            for name in _PAYLOAD_FIELDS:
                value = details.get(name)
                if isinstance(value, str):
                    yield f"{event.get('type')}.{name}", len(value.encode())


def aws_event_count(events: list[dict[str, Any]]) -> int:
    """The events AWS would record for this history (see the module's note)."""
    types = [str(e.get("type", "")) for e in events]
    if "TaskStarted" in types or "TaskScheduled" not in types:
        return len(types)  # complete, as AWS records it
    count, in_map = len(types), 0
    if "ExecutionStarted" not in types:
        count += 2  # a Distributed Map's child, recorded as its tasks only
    task_outside_map = 2 if "TaskStateEntered" in types else 4
    for kind in types:
        if kind == "MapStateEntered" and "MapRunStarted" not in types:
            count += 2  # a Distributed Map's run (an inline Map records no run: this counts from above)
        in_map += kind == "MapStateEntered"
        in_map -= kind == "MapStateExited"
        if kind == "TaskScheduled":
            count += 6 if in_map > 0 else task_outside_map
    return count


def measure(execution_arn: str, events: list[dict[str, Any]]) -> Measure:
    """The event count and the largest payload of one history; a violation for each limit it breaks."""
    found = Measure(execution_arn, events=len(events), aws_events=aws_event_count(events))
    state = ""
    for event in events:
        state = event.get("stateEnteredEventDetails", {}).get("name", state)
        for where, size in _payloads(event):
            if size > found.largest_payload:
                found.largest_payload, found.largest_at = size, f"{where} (state {state or '-'})"
            if size > MAX_PAYLOAD_BYTES:
                found.violations.append(
                    f"{execution_arn}: {where} in state {state or '-'} is {size} bytes, over AWS's {MAX_PAYLOAD_BYTES}"
                )
    if found.aws_events > MAX_HISTORY_EVENTS:
        found.violations.append(
            f"{execution_arn}: {found.aws_events} history events on AWS ({found.events} recorded here), over AWS's "
            f"{MAX_HISTORY_EVENTS} per execution"
        )
    return found


def history(stepfunctions: Any, execution_arn: str) -> list[dict[str, Any]]:
    pages = stepfunctions.get_paginator("get_execution_history").paginate(executionArn=execution_arn)
    return [event for page in pages for event in page["events"]]


def children(stepfunctions: Any, execution_arn: str) -> list[str]:
    """The child executions of an execution's Distributed Map runs (none for inline maps)."""
    try:
        runs = stepfunctions.list_map_runs(executionArn=execution_arn).get("mapRuns", [])
    except stepfunctions.exceptions.ClientError:
        return []  # a backend without map runs has no child executions either
    found = []
    for run in runs:
        pages = stepfunctions.get_paginator("list_executions").paginate(mapRunArn=run["mapRunArn"])
        found += [e["executionArn"] for page in pages for e in page["executions"]]
    return found


def check(stepfunctions: Any, execution_arn: str) -> list[Measure]:
    """Measure an execution and each of its child executions."""
    return [
        measure(arn, history(stepfunctions, arn)) for arn in [execution_arn, *children(stepfunctions, execution_arn)]
    ]


def ended_executions(stepfunctions: Any) -> Iterator[str]:
    """Every ended execution of every state machine on the backend."""
    for page in stepfunctions.get_paginator("list_state_machines").paginate():
        for machine in page["stateMachines"]:
            pages = stepfunctions.get_paginator("list_executions").paginate(stateMachineArn=machine["stateMachineArn"])
            yield from (e["executionArn"] for p in pages for e in p["executions"] if e["status"] != "RUNNING")
