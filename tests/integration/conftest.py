"""The local stack for integration tests: started once per session on free loopback ports, stopped after."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from common import aws
from local import lifecycle
from local.ports import free_port
from tests import limits

PROJECT = Path(__file__).resolve().parents[2]


_checked: set[str] = set()
MEASURES: list[limits.Measure] = []  # every execution the guard read, for whoever wants the figures


def guard_step_functions_limits() -> None:
    """Fail on any ended execution of the running stack (a Distributed Map's children included) that AWS would
    refuse: a state payload over 256 KiB or a history over 25,000 events. The local Step Functions enforces
    neither; each execution is read once."""
    sfn = aws.client("stepfunctions")
    violations = []
    for arn in limits.ended_executions(sfn):
        if arn in _checked:
            continue
        _checked.add(arn)
        for measured in limits.check(sfn, arn):
            MEASURES.append(measured)
            violations += measured.violations
    assert not violations, "AWS would fail these executions:\n" + "\n".join(violations)


@pytest.fixture(autouse=True)
def step_functions_limits() -> Iterator[None]:
    """After every integration test on a local stack: the limits guard over what ran."""
    yield
    if os.environ.get("AWS_ENDPOINT_URL"):
        guard_step_functions_limits()


@contextmanager
def running_stack(state: Path, runtime: str = "process") -> Iterator[dict[str, str]]:
    """A local stack of its own (state folder, free ports, the local SageMaker's runtime), the environment
    pointing at it while it runs, and everything as it was afterwards."""
    overrides = {
        "FHE_LOCAL_STACK_DIR": str(state),
        "FHE_MINISTACK_VENV": os.environ.get("FHE_MINISTACK_VENV", str(PROJECT / ".local-stack" / "ministack-venv")),
        "FHE_LOCAL_AWS_PORT": str(free_port()),
        "FHE_LOCAL_SAGEMAKER_PORT": str(free_port()),
    }
    saved = {k: os.environ.get(k) for k in [*overrides, *lifecycle.client_environment()]}
    os.environ.update(overrides)
    try:
        environment = lifecycle.up(runtime)
        os.environ.update(environment)
        yield environment
        guard_step_functions_limits()  # what ended after the last test
    finally:
        lifecycle.down()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="session")
def local_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    with running_stack(tmp_path_factory.mktemp("local-stack")) as environment:
        yield environment


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not MEASURES:
        return
    largest = max(MEASURES, key=lambda m: m.largest_payload)
    longest = max(MEASURES, key=lambda m: m.aws_events)
    terminalreporter.write_line(
        f"Step Functions limits guard: {len(MEASURES)} execution histories read; largest payload "
        f"{largest.largest_payload} bytes ({largest.largest_at}, limit {limits.MAX_PAYLOAD_BYTES}); longest history "
        f"{longest.aws_events} events as AWS counts them, {longest.events} recorded (limit {limits.MAX_HISTORY_EVENTS})"
    )
