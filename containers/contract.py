"""The SageMaker container path contract, with a movable root.

In SageMaker every path below lives under ``/``. Setting ``SAGEMAKER_CONTAINER_ROOT`` moves the whole tree
(``<root>/opt/ml/...``), so the same entry points run unprivileged on a laptop or under the local SageMaker.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT_VARIABLE = "SAGEMAKER_CONTAINER_ROOT"


class StepInputError(Exception):
    """A problem with the step's input that the user must fix; its message becomes the FailureReason."""


def container_path(path: str | Path) -> Path:
    """Map an absolute container path (``/opt/ml/...``) into the configured root."""
    root = Path(os.environ.get(ROOT_VARIABLE, "/"))
    return root / Path(path).as_posix().lstrip("/")


def model_dir() -> Path:
    return Path(os.environ["SM_MODEL_DIR"]) if "SM_MODEL_DIR" in os.environ else container_path("/opt/ml/model")


def channel_dir(name: str) -> Path:
    variable = f"SM_CHANNEL_{name.upper()}"
    if variable in os.environ:
        return Path(os.environ[variable])
    return container_path(f"/opt/ml/input/data/{name}")


def hyperparameters() -> dict[str, str]:
    """SageMaker writes every hyperparameter as a string into ``hyperparameters.json``."""
    if "SM_HPS" in os.environ:
        raw: dict[str, Any] = json.loads(os.environ["SM_HPS"])
    else:
        path = container_path("/opt/ml/input/config/hyperparameters.json")
        raw = json.loads(path.read_text()) if path.exists() else {}
    return {str(k): str(v) for k, v in raw.items()}


def failure_file(kind: str) -> Path:
    # Training jobs read /opt/ml/output/failure, processing jobs /opt/ml/output/message.
    name = "failure" if kind == "training" else "message"
    return container_path(f"/opt/ml/output/{name}")


def run_entry_point(kind: str, job: Callable[[], object]) -> None:
    """Run one step; on failure write the reason where SageMaker reads it and exit non-zero."""
    try:
        job()
    except StepInputError as error:
        _fail(kind, str(error))
    except Exception as error:  # the step must always leave a FailureReason behind
        traceback.print_exc()
        _fail(kind, f"{type(error).__name__}: {error}")


def _fail(kind: str, reason: str) -> None:
    print(f"ERROR: {reason}", file=sys.stderr, flush=True)
    path = failure_file(kind)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(reason[:1024])  # SageMaker keeps at most 1 KiB of a failure reason
    except OSError as error:
        print(f"could not write the failure reason to {path}: {error}", file=sys.stderr)
    raise SystemExit(1)
