"""Fault injection for tests of the workflow: ``<state dir>/faults.json`` holds ``{"<endpoint>": [{"input_contains":
"...", "fail_first": n, "delay_seconds": s}, ...]}``. An input matching a rule waits s seconds (a slow instance),
then fails its first n attempts before the container sees it, as a crashed instance would. The file is read at
each invocation, so a test can change it while the server runs."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

FAULTS_FILE = "faults.json"


class Faults:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / FAULTS_FILE
        self._attempts: dict[str, int] = {}
        self._lock = threading.Lock()

    def fails(self, endpoint: str, input_location: str) -> bool:
        """Whether this attempt at ``input_location`` on ``endpoint`` fails (after the rule's delay)."""
        try:
            rules = json.loads(self.path.read_text()).get(endpoint) or []
        except FileNotFoundError:
            return False
        rule = next((r for r in rules if r.get("input_contains", "") in input_location), None)
        if rule is None:
            return False
        time.sleep(float(rule.get("delay_seconds", 0)))
        with self._lock:
            attempt = self._attempts.get(input_location, 0) + 1
            self._attempts[input_location] = attempt
        return attempt <= int(rule.get("fail_first", 0))
