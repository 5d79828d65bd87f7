"""Where the local stack keeps its state (``FHE_LOCAL_STACK_DIR``, by default ``.local-stack/`` of the working
folder): what the lifecycle, the people and the tests that start stacks of their own agree on."""

from __future__ import annotations

import os
from pathlib import Path


def stack_dir() -> Path:
    return Path(os.environ.get("FHE_LOCAL_STACK_DIR", Path.cwd() / ".local-stack")).resolve()
