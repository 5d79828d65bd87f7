"""The distribution stands alone: its code and its tests import only themselves and its declared dependencies
(boto3 and botocore; cbor2, pycose, cryptography and asn1crypto for attestation documents and KMS's envelopes; the
local AWS's extension also ministack, which it extends and runs in; the tests also pytest) beside the standard
library, imports inside functions included (the tests' helper modules are their own); its README lists
exactly the operations the server's dispatch table serves."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

from aws_emulators.sagemaker.server import LocalSageMaker

DISTRIBUTION = Path(__file__).resolve().parents[2]
DEPENDENCIES = {"boto3", "botocore", "cbor2", "pycose", "cryptography", "asn1crypto"}  # as pyproject.toml declares
ALLOWED = {"src": {"aws_emulators", *DEPENDENCIES}, "tests": {"aws_emulators", "pytest", *DEPENDENCIES}}
TEST_HELPERS = {helper.stem for helper in (DISTRIBUTION / "tests").rglob("*.py")}
README_SECTIONS = {
    "sagemaker": "SageMaker",
    "sagemaker-runtime": "sagemaker-runtime",
    "application-autoscaling": "Application Auto Scaling",
}


def imported_roots(path: Path) -> set[str]:
    """The top-level module of every absolute import in ``path``, at any depth."""
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("folder", sorted(ALLOWED))
def test_nothing_outside_the_distribution_is_imported(folder: str) -> None:
    files = sorted((DISTRIBUTION / folder).rglob("*.py"))
    assert files, f"{folder}/ holds the distribution's {folder}"
    allowed = ALLOWED[folder] | set(sys.stdlib_module_names) | {"__future__"}
    offenders = {}
    for path in files:
        beside = {helper.stem for helper in path.parent.glob("*.py")} | (TEST_HELPERS if folder == "tests" else set())
        extended = {"ministack"} if "local_aws" in path.parts and folder == "src" else set()
        if outside := imported_roots(path) - allowed - beside - extended:
            offenders[str(path.relative_to(DISTRIBUTION))] = sorted(outside)
    assert not offenders, f"imports from outside the distribution: {offenders}"


def test_the_import_check_sees_imports_inside_functions(tmp_path: Path) -> None:
    module = tmp_path / "module.py"
    module.write_text("import json\n\ndef later() -> None:\n    from common.aws import client\n")
    assert imported_roots(module) == {"json", "common"}


def readme_operations() -> dict[str, set[str]]:
    """The operations each service's table in the README lists."""
    text = (DISTRIBUTION / "README.md").read_text()
    listed = {}
    for service, title in README_SECTIONS.items():
        section = re.search(rf"^### {re.escape(title)}\b.*?(?=^### |^## |\Z)", text, re.MULTILINE | re.DOTALL)
        assert section, f"the README has no section '### {title}'"
        listed[service] = set(re.findall(r"^\| `(\w+)` \|", section.group(0), re.MULTILINE))
    return listed


def test_the_readme_lists_exactly_the_operations_served(tmp_path: Path) -> None:
    service = LocalSageMaker(tmp_path)
    try:
        served = {name: set(operations) for name, operations in service.services.items()}
    finally:
        service.endpoints.shutdown()
        service.store.close()
    assert set(served) == set(README_SECTIONS), "a service served has no table in the README"
    assert readme_operations() == served
