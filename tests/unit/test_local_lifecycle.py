"""The local stack's lifecycle: how its services are started."""

from __future__ import annotations

from pathlib import Path

import pytest


def test_a_service_of_the_stack_never_inherits_another_stacks_endpoints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The local AWS hands its environment to its Lambda functions: a second stack started from a process that
    points at the first must not send its functions' calls there."""
    import sys
    import time

    from local import lifecycle

    monkeypatch.setenv("FHE_LOCAL_STACK_DIR", str(tmp_path))
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:2")
    probe = lifecycle.Service("probe", 0, "/")
    script = "import os; print(sorted(k for k in os.environ if k.startswith('AWS_ENDPOINT_URL')))"
    lifecycle._spawn(probe, [sys.executable, "-c", script], {"AWS_ENDPOINT_URL_SAGEMAKER": "http://127.0.0.1:3"})
    deadline = time.monotonic() + 30
    while "]" not in probe.log_file.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert probe.log_file.read_text().strip() == "['AWS_ENDPOINT_URL_SAGEMAKER']"
