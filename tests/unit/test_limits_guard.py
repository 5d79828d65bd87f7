"""The Step Functions limits guard that the integration tests run over every execution history: it must catch
what AWS refuses and pass what AWS accepts."""

from __future__ import annotations

import json
from typing import Any

from tests import limits

ARN = "arn:aws:states:us-east-1:000000000000:execution:m:e"


def _entered(name: str, payload: str) -> dict[str, Any]:
    return {"type": "TaskStateEntered", "stateEnteredEventDetails": {"name": name, "input": payload}}


def _exited(name: str, payload: str) -> dict[str, Any]:
    return {"type": "TaskStateExited", "stateExitedEventDetails": {"name": name, "output": payload}}


def test_a_history_within_the_limits_passes_and_is_measured() -> None:
    small = json.dumps({"bundle": {"bundle_id": "b-1"}})
    measured = limits.measure(ARN, [_entered("Validate", small), _exited("Validate", small * 3)])
    assert measured.violations == []
    assert (measured.events, measured.largest_payload) == (2, len(small) * 3)
    assert "TaskStateExited.output" in measured.largest_at and "Validate" in measured.largest_at


def test_a_state_output_over_256_kib_is_named_with_its_state() -> None:
    exact = "x" * limits.MAX_PAYLOAD_BYTES
    assert limits.measure(ARN, [_exited("InferShards", exact)]).violations == [], "256 KiB itself is allowed"
    over = "é" * (limits.MAX_PAYLOAD_BYTES // 2 + 1)  # counted in UTF-8 bytes, as AWS counts
    [violation] = limits.measure(ARN, [_entered("InferShards", "{}"), _exited("InferShards", over)]).violations
    assert "InferShards" in violation and str(limits.MAX_PAYLOAD_BYTES) in violation


def test_task_parameters_count_too() -> None:
    event = {"type": "TaskScheduled", "taskScheduledEventDetails": {"parameters": "p" * (300 * 1024)}}
    assert limits.measure(ARN, [event]).violations


def test_a_history_over_25000_events_fails() -> None:
    events = [{"type": "MapIterationStarted"}] * limits.MAX_HISTORY_EVENTS
    assert limits.measure(ARN, events).violations == []
    [violation] = limits.measure(ARN, [*events, {"type": "ExecutionSucceeded"}]).violations
    assert "25001 history events" in violation


def test_a_sparse_history_is_counted_as_aws_would_record_it() -> None:
    """The local Step Functions records two events of a Map iteration that waits on a task token; AWS eight."""
    iteration = [{"type": "TaskScheduled"}, {"type": "TaskSucceeded"}]
    task = [
        {"type": "TaskStateEntered"},
        {"type": "TaskScheduled"},
        {"type": "TaskSucceeded"},
        {"type": "TaskStateExited"},
    ]
    shards = 3200
    events = [
        {"type": "ExecutionStarted"},
        *task,
        {"type": "MapStateEntered"},
        *iteration * shards,
        {"type": "MapStateExited"},
        *task,
    ]
    measured = limits.measure(ARN, events)
    assert measured.events == 1 + 8 + 2 + 2 * shards
    assert measured.aws_events == 1 + 8 + 2 * 2 + 2 + 2 + 8 * shards
    assert measured.violations, "3,200 inline iterations are past AWS's history limit, though 6,410 were recorded"
    complete = [*task, {"type": "TaskStarted"}]
    assert limits.measure(ARN, complete).aws_events == len(complete), "a complete history is counted as it is"


def test_a_distributed_maps_child_is_counted_as_aws_records_it() -> None:
    """Of a child execution that waits on one task token the local Step Functions records two events; AWS eight
    (execution started, state entered, scheduled, started, submitted, succeeded, state exited, execution
    succeeded)."""
    child = [{"type": "TaskScheduled"}, {"type": "TaskSucceeded"}]
    assert limits.measure(ARN, child).aws_events == 8
