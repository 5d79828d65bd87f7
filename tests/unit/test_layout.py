"""The code's layout as ARCHITECTURE.md agrees it: no import cycle between top-level packages (imports inside
functions count), the auditor's code independent of the Lambdas, tests and benchmarks independent of the demo,
and no module of the bundle format over its size budget."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = (
    "audit",
    "bench",
    "client",
    "common",
    "containers",
    "infrastructure",
    "lambdas",
    "local",
    "pipelines",
    "examples",
)


def _modules(folder: str) -> Iterator[Path]:
    yield from sorted((ROOT / folder).rglob("*.py"))


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth (inside functions too), as dotted names."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def package_graph() -> dict[str, set[str]]:
    """Top-level package → the other top-level packages its modules import."""
    graph: dict[str, set[str]] = {}
    for package in PACKAGES:
        imported = {name.split(".")[0] for path in _modules(package) for name in _imports(path)}
        graph[package] = (imported & set(PACKAGES)) - {package}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle in ``graph`` as the path that closes it, or None."""
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return [*path[path.index(target) :], target] if target in path else [*path, target]
            if target not in state and (found := visit(target, [*path, target])):
                return found
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node, [node])):
            return found
    return None


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_between_top_level_packages() -> None:
    cycle = find_cycle(package_graph())
    assert cycle is None, f"the top-level packages import each other: {' → '.join(cycle or [])}"


def test_the_auditor_does_not_import_the_lambdas() -> None:
    offenders = [
        str(path.relative_to(ROOT))
        for path in _modules("audit")
        if any(n.split(".")[0] == "lambdas" for n in _imports(path))
    ]
    assert not offenders, f"audit/ imports lambdas/: {offenders}"


@pytest.mark.parametrize("folder", ["tests", "bench"])
def test_no_test_or_benchmark_imports_the_demo(folder: str) -> None:
    offenders = [
        str(path.relative_to(ROOT))
        for path in _modules(folder)
        if any(name == "examples.demo" or name.startswith("examples.demo.") for name in _imports(path))
    ]
    assert not offenders, f"{folder}/ imports examples/demo.py: {offenders}"


def test_bundle_format_modules_stay_small() -> None:
    sizes = {path.name: len(path.read_text().splitlines()) for path in (ROOT / "common" / "bundle").glob("*.py")}
    assert sizes, "common/bundle/ holds the bundle format"
    assert max(sizes.values()) <= 350, f"modules of the bundle format over 350 lines: {sizes}"
