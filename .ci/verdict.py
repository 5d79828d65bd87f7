"""The test run's verdict from its JUnit report, not from pytest's exit status alone: a library's shutdown code
can end the process with status 0 after failures. Fails when any test failed or errored, or when none ran.

    python .ci/verdict.py .test-results.xml
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    path = Path((argv or sys.argv[1:] or [".test-results.xml"])[0])
    if not path.is_file():
        raise SystemExit(f"verdict: {path} was not written: the test run did not finish")
    root = ET.parse(path).getroot()  # noqa: S314
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    ran = counts["tests"] - counts["skipped"]
    print(f"verdict: {ran} ran, {counts['failures']} failed, {counts['errors']} errors, {counts['skipped']} skipped")
    if ran == 0 or counts["failures"] or counts["errors"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
