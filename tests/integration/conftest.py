"""The local stack for integration tests: started once per session on free loopback ports, stopped after."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from local import stack
from local.ports import free_port

PROJECT = Path(__file__).resolve().parents[2]


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
    saved = {k: os.environ.get(k) for k in [*overrides, *stack.client_environment()]}
    os.environ.update(overrides)
    try:
        environment = stack.up(runtime)
        os.environ.update(environment)
        yield environment
    finally:
        stack.down()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="session")
def local_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    with running_stack(tmp_path_factory.mktemp("local-stack")) as environment:
        yield environment
