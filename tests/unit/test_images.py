"""The container images' definitions: each copies exactly the modules its entry point imports, both share the FHE
runtime's layers, the tag covers exactly what goes in, and the build and run command lines carry what SageMaker
and a proxied network need (and no secret in a layer or on a command line). Building and running the real images
is tests/integration/test_container_images.py."""

from __future__ import annotations

import ast
import shutil
import stat
from pathlib import Path

import pytest
import tomllib

from infrastructure import images
from infrastructure.templates import ROOT

PROJECT_PACKAGES = {"common", "containers", "pipelines", "local", "client", "lambdas", "infrastructure", "audit"}
ENTRY_POINTS = {"training": "containers.training.__main__", "inference": "containers.inference.__main__"}


def _module_file(name: str) -> Path | None:
    path = ROOT / name.replace(".", "/")
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return path.with_suffix(".py") if path.with_suffix(".py").is_file() else None


def _imported_project_files(entry_point: str) -> set[str]:
    """Every project file the entry point imports, directly or not, counting imports inside functions and the
    packages that hold each module."""
    seen: set[Path] = set()
    pending = [entry_point]
    while pending:
        name = pending.pop()
        found = _module_file(name)
        if found is None or found in seen:
            continue
        seen.add(found)
        parts = name.split(".")
        pending += [".".join(parts[:i]) for i in range(1, len(parts))]
        for node in ast.walk(ast.parse(found.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            else:
                continue
            pending += [n for n in names if n.split(".")[0] in PROJECT_PACKAGES]
    return {p.relative_to(ROOT).as_posix() for p in seen}


@pytest.mark.parametrize("role", images.ROLES)
def test_each_image_copies_exactly_the_modules_its_entry_point_imports(role: str) -> None:
    copied = {s for s in images.dockerfile_sources(role) if s.endswith(".py")}
    assert copied == _imported_project_files(ENTRY_POINTS[role])
    assert not any(s.startswith(("local/", "pipelines/")) for s in copied)


def test_each_module_lands_where_its_package_is_imported_from() -> None:
    """A module copied into another folder than its own would not import in the image (``common.bundle.store``
    copied into ``common/``): each copied module's destination is its own folder."""
    text = (ROOT / "containers" / "Dockerfile").read_text().replace("\\\n", " ")
    misplaced = []
    for line in text.splitlines():
        words = line.split()
        if not words or words[0] != "COPY" or any(w.startswith("--") for w in words[1:]):
            continue
        *sources, destination = words[1:]
        misplaced += [s for s in sources if s.endswith(".py") and f"{Path(s).parent.as_posix()}/" != destination]
    assert not misplaced, f"modules copied outside their own folder: {misplaced}"


def test_both_images_stand_on_one_fhe_runtime_with_the_linker() -> None:
    training, inference = images.stage_instructions("training"), images.stage_instructions("inference")
    shared = training.index("FROM fhe-runtime AS training")
    assert training[:shared] == inference[: inference.index("FROM fhe-runtime AS inference")]
    runtime = training[:shared]
    assert runtime[0] == "ARG BASE_IMAGE=python:3.11.7-slim-bookworm"
    assert any("apt-get install" in line and "binutils" in line for line in runtime)
    assert any("requirements/fhe.txt -c" in line for line in runtime)
    # Each image's own stage adds its extras and code, nothing of the other's.
    assert not any("inference" in line for line in training[shared:])
    assert not any("training" in line for line in inference[shared:])


def test_an_unknown_stage_is_refused() -> None:
    with pytest.raises(images.ImageError, match="no stage 'batch'"):
        images.stage_instructions("batch")


def _requirements(path: Path) -> set[str]:
    lines = (line.strip() for line in path.read_text().splitlines())
    return {line for line in lines if line and not line.startswith("#")}


def test_the_image_requirements_are_the_projects_own() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    folder = ROOT / "containers/requirements"
    assert _requirements(folder / "fhe.txt") == set(extras["fhe"])
    images_need = _requirements(folder / "training.txt") | _requirements(folder / "inference.txt")
    assert images_need == (set(extras["containers"]) - {"fhe-batch-inference[fhe]"}) | set(project["dependencies"])


def test_the_enclave_image_is_the_enclave_application_on_its_pinned_runtimes() -> None:
    """containers/enclave/Dockerfile, from which nitro-cli build-enclave makes the EIF: the project's enclave extra
    pinned by constraints.txt, and the zip application containers/enclave/image.py builds, started listening on
    vsock as the parent connects to it."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert _requirements(ROOT / "containers/requirements/enclave.txt") == set(extras["enclave"])
    dockerfile = (ROOT / "containers/enclave/Dockerfile").read_text()
    assert "-r /opt/requirements/enclave.txt -c /opt/requirements/constraints.txt" in dockerfile
    assert "COPY build/enclave/enclave.pyz /opt/enclave/enclave.pyz" in dockerfile
    assert '"--listen", "vsock:4294967295:5000"' in dockerfile  # any CID: the enclave's own
    user_data = (ROOT / "infrastructure/enclave.yaml").read_text()
    assert "--enclave-cid 16" in user_data and "--enclave vsock:16:5000" in user_data


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of what the images and the tag read, as the repository root."""
    for name in ("containers", "common", "constraints.txt", "README.md", "local/lifecycle.py"):
        source, target = ROOT / name, tmp_path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, target)
    monkeypatch.setattr(images, "ROOT", tmp_path)
    return tmp_path


def _tags(base_image: str = "") -> dict[str, str]:
    return {role: images.content_tag(role, base_image) for role in images.ROLES}


def _append(path: Path, text: str = "\n# changed\n") -> None:
    with path.open("a") as file:
        file.write(text)


def test_the_tag_covers_exactly_each_images_inputs(tree: Path) -> None:
    first = _tags()
    assert all(len(tag) == 20 and tag.startswith("src-") for tag in first.values())
    assert _tags() == first, "stable"
    _append(tree / "README.md")
    _append(tree / "local/lifecycle.py")
    assert _tags() == first, "files no image copies"
    _append(tree / "common/bundle/messages.py")  # the serving app's only
    second = _tags()
    assert second["training"] == first["training"] and second["inference"] != first["inference"]
    _append(tree / "containers/training/train.py")
    third = _tags()
    assert third["training"] != second["training"] and third["inference"] == second["inference"]
    _append(tree / "containers/Dockerfile", "# a comment is no input\n")
    assert _tags() == third
    _append(tree / "containers/Dockerfile", "LABEL changed=yes\n")  # the last stage: inference
    fourth = _tags()
    assert fourth["training"] == third["training"] and fourth["inference"] != third["inference"]
    assert _tags("localhost/other-base:1") != _tags(), "the base image is an input"


def test_a_dockerfile_that_copies_a_missing_file_is_refused(tree: Path) -> None:
    _append(tree / "containers/Dockerfile", "COPY nowhere.py containers/\n")
    with pytest.raises(images.ImageError, match=r"the inference image copies nowhere\.py, which does not exist"):
        images.content_tag("inference")


def _fake_engine(folder: Path, name: str = "podman") -> Path:
    """An engine that answers ``info`` and records every other call (arguments, and secrets' contents)."""
    folder.mkdir(exist_ok=True)
    script = folder / name
    script.write_text(
        "#!/bin/sh\n"
        '[ "$1" = info ] && exit 0\n'
        f'printf "%s\\n" "$@" > {folder}/args\n'
        'for a in "$@"; do case "$a" in id=pip-conf,src=*) cat "${a#id=pip-conf,src=}" > '
        f"{folder}/pip.conf;; esac; done\n"
        "exit 0\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


def test_the_build_passes_the_base_the_platform_and_the_hosts_ca_and_index_as_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = images.ContainerEngine("podman", str(_fake_engine(tmp_path / "bin")))
    ca_bundle = tmp_path / "proxy-ca.pem"
    ca_bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    monkeypatch.setenv("PIP_CERT", str(ca_bundle))
    monkeypatch.setenv("PIP_INDEX_URL", "https://pypi.example.internal/simple")
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "file:///opt/local-wheels https://mirror.example.internal/simple")
    image = images.Image("training", "1.dkr.ecr.r.amazonaws.com/acme-training", "src-0123456789abcdef")
    engine.build(image, report=lambda line: None, base_image="localhost/fhe-python-base:3.11-bookworm")
    arguments = (tmp_path / "bin/args").read_text().splitlines()
    assert arguments[:9] == [
        "build",
        "--platform",
        "linux/amd64",
        "-f",
        "containers/Dockerfile",
        "--target",
        "training",
        "-t",
        image.uri,
    ]
    assert "BASE_IMAGE=localhost/fhe-python-base:3.11-bookworm" in arguments
    assert f"id=ca-bundle,src={ca_bundle}" in arguments and arguments[-1] == "."
    pip_conf = (tmp_path / "bin/pip.conf").read_text()
    assert f"cert = {images.CA_BUNDLE_TARGET}" in pip_conf
    assert "index-url = https://pypi.example.internal/simple" in pip_conf
    assert "extra-index-url = https://mirror.example.internal/simple" in pip_conf and "file://" not in pip_conf


def test_without_a_working_engine_the_error_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = tmp_path / "docker"
    broken.write_text("#!/bin/sh\necho 'Cannot connect to the Docker daemon' >&2\nexit 1\n")
    broken.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(images.ImageError, match=r"docker: Cannot connect.*podman: not installed.*install Docker"):
        images.ContainerEngine.find()
    with pytest.raises(images.ImageError, match="unknown container engine"):
        images.ContainerEngine.find("rkt")
