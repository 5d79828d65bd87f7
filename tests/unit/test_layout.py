"""The code's layout as docs/architecture.md describes it: the product's wheel holds the product only, no product
module imports the emulators, the development stack, the demo, the benchmarks or the tests, no two files import
each other however indirectly (imports inside functions count), and no module of the bundle format grows past its
size budget."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# What the product's wheel ships, and what lives beside it in the repository only.
PRODUCT = ("audit", "client", "common", "containers", "infrastructure", "lambdas", "pipelines")
BESIDE = ("bench", "examples", "local", "tests")
EMULATORS_SOURCE = ROOT / "emulators" / "src"
EMULATOR_PACKAGES = tuple(sorted(p.name for p in EMULATORS_SOURCE.iterdir() if (p / "__init__.py").exists()))


def _module_name(path: Path) -> str:
    base = EMULATORS_SOURCE if path.is_relative_to(EMULATORS_SOURCE) else ROOT
    parts = path.relative_to(base).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _files() -> Iterator[Path]:
    for folder in (*PRODUCT, *BESIDE):
        yield from sorted((ROOT / folder).rglob("*.py"))
    yield from sorted(EMULATORS_SOURCE.rglob("*.py"))
    yield from sorted((ROOT / "emulators" / "tests").rglob("*.py"))


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth (inside functions too), as dotted names, ``from a import b``
    giving both ``a`` and ``a.b`` (``b`` may be a module)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def module_graph() -> dict[str, set[str]]:
    """Module → the project's modules it imports (a name resolved to the longest module it starts with)."""
    files = {_module_name(path): path for path in _files()}

    def resolve(name: str) -> str | None:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        targets = {resolve(name) for name in _imports(path)}
        graph[module] = {t for t in targets if t is not None and t != module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle in ``graph`` as the path that closes it, or None (iterative depth-first search)."""
    state: dict[str, str] = {}
    for start in sorted(graph):
        if start in state:
            continue
        path: list[str] = [start]
        pending: list[Iterator[str]] = [iter(sorted(graph[start]))]
        state[start] = "open"
        while pending:
            target = next(pending[-1], None)
            if target is None:
                state[path.pop()] = "done"
                pending.pop()
            elif state.get(target) == "open":
                return [*path[path.index(target) :], target]
            elif target not in state:
                state[target] = "open"
                path.append(target)
                pending.append(iter(sorted(graph.get(target, ()))))
    return None


def test_the_cycle_finder_finds_a_cycle_and_only_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_two_files_import_each_other() -> None:
    cycle = find_cycle(module_graph())
    assert cycle is None, f"these modules import each other: {' → '.join(cycle or [])}"


def test_no_product_module_imports_what_lives_beside_the_product() -> None:
    outside = {*BESIDE, *EMULATOR_PACKAGES}
    offenders = {
        module: sorted(t for t in targets if t.split(".")[0] in outside)
        for module, targets in module_graph().items()
        if module.split(".")[0] in PRODUCT
    }
    assert not {m: t for m, t in offenders.items() if t}, "the product imports the emulators or the development stack"


def test_the_emulators_import_nothing_of_the_product_or_the_development_stack() -> None:
    project = {*PRODUCT, *BESIDE}
    offenders = {
        str(path.relative_to(ROOT)): sorted(n for n in _imports(path) if n.split(".")[0] in project)
        for path in [*EMULATORS_SOURCE.rglob("*.py"), *(ROOT / "emulators" / "tests").rglob("*.py")]
    }
    assert EMULATOR_PACKAGES, "emulators/src holds the emulators' packages"
    assert not {p: n for p, n in offenders.items() if n}


def test_the_auditor_does_not_import_the_lambdas() -> None:
    offenders = [
        module
        for module, targets in module_graph().items()
        if module.split(".")[0] == "audit" and any(t.split(".")[0] == "lambdas" for t in targets)
    ]
    assert not offenders, f"audit/ imports lambdas/: {offenders}"


@pytest.mark.parametrize("folder", ["tests", "bench"])
def test_no_test_or_benchmark_imports_the_demo(folder: str) -> None:
    offenders = [
        module
        for module, targets in module_graph().items()
        if module.split(".")[0] == folder and any(t.startswith("examples") for t in targets)
    ]
    assert not offenders, f"{folder}/ imports examples/: {offenders}"


def test_the_products_wheel_holds_the_product_only(tmp_path: Path) -> None:
    """Built as pip builds it for an install, from a copy of the tree (a build folder left in the checkout could
    add stale modules), without fetching a build backend: the one installed here."""
    source = tmp_path / "source"
    leave_out = shutil.ignore_patterns(".*", "build", "*.egg-info", "__pycache__", "results")
    shutil.copytree(ROOT, source, ignore=leave_out)
    build = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation"]
    subprocess.run([*build, "-w", str(tmp_path), str(source)], check=True, capture_output=True, cwd=tmp_path)
    (wheel,) = tmp_path.glob("fhe_batch_inference-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names if name.endswith(".py")}
    assert tops == set(PRODUCT), f"the wheel's packages: {sorted(tops)}"
    # The data the product reads beside its modules: the estimate table and the templates it deploys.
    assert {"common/estimates.json", "infrastructure/served_version.yaml", "infrastructure/product.yaml"} <= set(names)
    assert any(name.startswith("infrastructure/product/") for name in names)


def test_bundle_format_modules_stay_small() -> None:
    sizes = {path.name: len(path.read_text().splitlines()) for path in (ROOT / "common" / "bundle").glob("*.py")}
    assert sizes, "common/bundle/ holds the bundle format"
    assert max(sizes.values()) <= 350, f"modules of the bundle format over 350 lines: {sizes}"


def _readme_layout() -> list[str]:
    """The paths README's layout table names in its first column ("What is here")."""
    text = (ROOT / "README.md").read_text()
    table = text.split("## What is here", 1)[1].split("\n\n", 2)[1]
    first_cells = [line.split("|")[1] for line in table.splitlines() if line.startswith("| `")]
    return [path for cell in first_cells for path in re.findall(r"`([^`]+)`", cell)]


def test_the_readmes_layout_table_matches_the_tree() -> None:
    named = _readme_layout()
    assert named, "README's layout table names the project's folders"
    missing = [path for path in named if not (ROOT / path).exists()]
    assert not missing, f"README's layout table names what is not there: {missing}"
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    folders = {line.split("/")[0] for line in tracked.splitlines() if "/" in line and not line.startswith(".")}
    unnamed = sorted(folders - {path.rstrip("/").split("/")[0] for path in named})
    assert not unnamed, f"folders README's layout table leaves out: {unnamed}"
