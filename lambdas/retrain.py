"""Starts the training pipeline on ML ops' retraining schedule (EventBridge Scheduler → this function).

A round is skipped while an execution of the pipeline is still running: a slow run is never overlapped by the next
one. The execution carries the schedule's name as its display name, so the audit shows why it ran."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from lambdas.runtime import client, logger, metrics, setting, tracer

_RUNNING = "Executing"


class RetrainEventError(ValueError):
    """The schedule sent an input this function cannot use."""


@dataclass(frozen=True)
class RetrainRequest:
    pipeline_name: str
    reason: str

    @classmethod
    def from_event(cls, event: Any) -> RetrainRequest:
        if not isinstance(event, dict):
            raise RetrainEventError(f"the schedule's input must be a JSON object, got {type(event).__name__}")
        pipeline = event.get("pipeline_name") or setting("PIPELINE_NAME")
        if not isinstance(pipeline, str) or pipeline != setting("PIPELINE_NAME"):
            # The role may start this deployment's pipeline only; say so rather than fail on AccessDenied.
            raise RetrainEventError(f"pipeline_name {pipeline!r} is not this deployment's {setting('PIPELINE_NAME')}")
        reason = str(event.get("reason") or "schedule")
        return cls(pipeline, reason)


def display_name(reason: str) -> str:
    """A pipeline execution display name (letters, digits, hyphens; at most 82 characters)."""
    return re.sub(r"[^A-Za-z0-9-]+", "-", reason).strip("-")[:82] or "schedule"


def retrain(request: RetrainRequest) -> dict[str, Any]:
    sagemaker = client("sagemaker")
    running = sagemaker.list_pipeline_executions(
        PipelineName=request.pipeline_name, SortBy="CreationTime", SortOrder="Descending", MaxResults=10
    )["PipelineExecutionSummaries"]
    busy = [e["PipelineExecutionArn"] for e in running if e.get("PipelineExecutionStatus") == _RUNNING]
    if busy:
        logger.info("retraining skipped: a run is still going", extra={"running": busy})
        metrics.add_metric(name="RetrainingSkipped", unit=MetricUnit.Count, value=1)
        return {"started": None, "skipped_because": busy}
    arn = sagemaker.start_pipeline_execution(
        PipelineName=request.pipeline_name, PipelineExecutionDisplayName=display_name(request.reason)
    )["PipelineExecutionArn"]
    logger.info("retraining started", extra={"execution": arn, "reason": request.reason})
    metrics.add_metric(name="RetrainingStarted", unit=MetricUnit.Count, value=1)
    return {"started": arn, "skipped_because": []}


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: Any, context: LambdaContext) -> dict[str, Any]:
    return retrain(RetrainRequest.from_event(event))
