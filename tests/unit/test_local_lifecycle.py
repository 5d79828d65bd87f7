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


def test_state_another_version_left_is_refused_with_the_way_to_reset_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A returning user's state folder from before a format change (an older stack's queues and deployments) is
    refused by name instead of hanging the demo; reset deletes it and keeps what every version shares."""
    from local import lifecycle

    monkeypatch.setenv("FHE_LOCAL_STACK_DIR", str(tmp_path))
    (tmp_path / "ministack-venv").mkdir()  # an installation, and authorities made on first use: no state
    (tmp_path / "tls").mkdir()
    lifecycle.check_state_version(tmp_path)
    assert (tmp_path / lifecycle.STATE_STAMP).read_text().strip() == str(lifecycle.STATE_VERSION)
    lifecycle.check_state_version(tmp_path)  # its own state: started as before

    (tmp_path / lifecycle.STATE_STAMP).write_text("1\n")
    (tmp_path / "ministack").mkdir()
    (tmp_path / "ministack" / "state.json").write_text("{}")
    with pytest.raises(lifecycle.StateFromAnotherVersion, match=r"left by state version 1, .* local\.lifecycle reset"):
        lifecycle.check_state_version(tmp_path)
    (tmp_path / lifecycle.STATE_STAMP).unlink()
    with pytest.raises(lifecycle.StateFromAnotherVersion, match="an earlier version"):
        lifecycle.check_state_version(tmp_path)

    assert lifecycle.reset() == ["ministack"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ministack-venv", "tls"]
    lifecycle.check_state_version(tmp_path)  # afresh
