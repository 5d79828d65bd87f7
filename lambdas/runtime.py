"""What every handler shares: Powertools logger/metrics/tracer, settings, AWS clients, workflow errors."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from botocore.exceptions import ClientError

from common import aws
from common.audit_log import BUNDLE_EVENT_SOURCE
from common.workflow import FailureReason

SERVICE = "fhe-batch-workflow"
EVENT_SOURCE = BUNDLE_EVENT_SOURCE  # the source of the completion and failure events this workflow publishes

# The dashboard and alarms read these (infrastructure/product/monitoring.yaml names both; a unit test holds them
# to these values).
METRICS_NAMESPACE = "FheBatchInference"
logger = Logger(service=SERVICE)
metrics = Metrics(namespace=METRICS_NAMESPACE, service=SERVICE)
tracer = Tracer(service=SERVICE)

# AWS error codes that say "try again later": the state machine retries these with backoff.
_TRANSIENT_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "RequestLimitExceeded",
        "SlowDown",
        "ServiceUnavailable",
        "InternalFailure",
        "InternalError",
        "InternalServerError",
    }
)


def setting(name: str) -> str:
    """A required environment setting of the function (the template sets them all)."""
    value = os.environ.get(name)
    if not value:
        raise RuntimeError(f"the function's environment lacks {name}; redeploy it (fhe-deploy up)")
    return value


@cache
def client(service: str) -> Any:
    return aws.client(service)


class WorkflowError(Exception):
    """A bundle that cannot be processed. The message is the machine-readable reason (JSON) that the
    Quarantine step records; the exception's class name is the error name the state machine sees."""

    def __init__(
        self, stage: str, code: str, message: str, *, field: str | None = None, shard: int | None = None
    ) -> None:
        # The error name too: some runtimes report every function error under one generic name.
        self.reason = FailureReason(stage, code, message, field=field, shard=shard, error=type(self).__name__)
        super().__init__(self.reason.to_json())


class BundleRejected(WorkflowError):
    """The bundle itself is at fault (format, model, versions, missing objects): retrying cannot help."""


class TransientError(Exception):
    """An AWS service said "later" more often than the client's own retries allow: the state machine retries."""


@contextmanager
def transient_aws_errors() -> Iterator[None]:
    """Re-raise throttling and service-side faults as TransientError, which the state machine retries."""
    try:
        yield
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code", "")
        status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        if code in _TRANSIENT_CODES or status >= 500:
            raise TransientError(f"{error.operation_name}: {code}") from error
        raise


def publish(detail_type: str, detail: dict[str, Any]) -> None:
    """An event on the workflow's bus for whoever follows bundles (the batch owner, the audit trail)."""
    with transient_aws_errors():
        response = client("events").put_events(
            Entries=[
                {
                    "Source": EVENT_SOURCE,
                    "DetailType": detail_type,
                    "Detail": json.dumps(detail, sort_keys=True),
                    "EventBusName": os.environ.get("EVENT_BUS_NAME", "default"),
                }
            ]
        )
    if response.get("FailedEntryCount"):
        raise TransientError(f"EventBridge refused the {detail_type} event: {response['Entries']}")


def ended_waits(stepfunctions: Any) -> tuple[type[Exception], ...]:
    """What Step Functions answers for a task token whose wait has already ended (timed out, its execution stopped
    or gone): nothing is waiting for the answer any more."""
    errors = stepfunctions.exceptions
    return (errors.TaskTimedOut, errors.TaskDoesNotExist, errors.InvalidToken)


def fail_wait(sfn: Any, task_token: str, error: str, reason: FailureReason) -> bool:
    """End a shard's wait with ``error`` and ``reason`` as its cause; False when it had already ended."""
    try:
        with transient_aws_errors():
            sfn.send_task_failure(taskToken=task_token, error=error, cause=reason.to_json())
    except ended_waits(sfn):
        return False
    return True
