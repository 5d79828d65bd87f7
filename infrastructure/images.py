"""The training and inference container images: what goes into each (its stage of ``containers/Dockerfile``
says), a tag from exactly that content, and the build, login and push steps with Docker or podman.

The build takes the host's CA bundle and network pip settings as build secrets, so it works behind a
TLS-intercepting proxy or with a private index, and neither ends up in a layer.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from common import aws
from common.stack_outputs import IMAGE_ROLES, image_output, image_uri
from infrastructure.templates import ROOT

ROLES = IMAGE_ROLES  # also the names of their stages in the Dockerfile
DOCKERFILE = "containers/Dockerfile"
ENGINES = ("docker", "podman")
# SageMaker's CPU instances (ml.c7i, ml.c6i) are x86_64, whatever machine the image is built on.
PLATFORM = "linux/amd64"
# Where the Dockerfile mounts the CA bundle secret (keep in step with it).
CA_BUNDLE_TARGET = "/etc/ssl/certs/build-ca-bundle.pem"
# The host's pip settings that concern reaching an index; paths on the host (find-links, constraints) mean
# nothing inside the build.
PIP_NETWORK_SETTINGS = (
    "index-url",
    "extra-index-url",
    "trusted-host",
    "timeout",
    "default-timeout",
    "retries",
    "proxy",
)
_CA_BUNDLE_VARIABLES = ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "AWS_CA_BUNDLE")
_SYSTEM_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


class ImageError(RuntimeError):
    """An image could not be built, found or pushed."""


def stage_instructions(role: str) -> list[str]:
    """The instructions that make the image of ``role``: the arguments before the first ``FROM``, then each stage
    from the first one down to the stage named ``role`` (its ``FROM`` lines included)."""
    path = ROOT / DOCKERFILE
    preamble: list[str] = []
    stages: dict[str, tuple[str, list[str]]] = {}  # name: (what it is built FROM, its instructions)
    current: list[str] | None = None
    for instruction in _instructions(path.read_text()):
        words = instruction.split()
        if words[0].upper() == "FROM":
            name = words[3] if len(words) >= 4 and words[2].upper() == "AS" else f"#{len(stages)}"
            current = [instruction]
            stages[name] = (words[1], current)
        elif current is None:
            preamble.append(instruction)
        else:
            current.append(instruction)
    if role not in stages:
        raise ImageError(f"{path} has no stage {role!r} (stages: {', '.join(stages)})")
    chain: list[str] = []
    name = role
    while name in stages:
        parent, instructions = stages[name]
        chain = instructions + chain
        name = parent
    return preamble + chain


def dockerfile_sources(role: str) -> list[str]:
    """The context paths the image's ``COPY`` and ``ADD`` instructions take, in order."""
    sources: list[str] = []
    for instruction in stage_instructions(role):
        keyword, _, rest = instruction.partition(" ")
        if keyword.upper() not in ("COPY", "ADD"):
            continue
        if rest.lstrip().startswith("["):
            words = [str(w) for w in json.loads(rest)]
        else:
            words = [w for w in shlex.split(rest) if not w.startswith("--")]
        if len(words) < 2:
            raise ImageError(f"cannot read the instruction {instruction!r}")
        sources += words[:-1]
    return sources


def _instructions(text: str) -> Iterator[str]:
    current = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        yield current + stripped
        current = ""
    if current:
        yield current.strip()


def content_tag(role: str, base_image: str = "") -> str:
    """``src-`` and 16 hex digits of the sha256 over the image's inputs: the instructions that make it (not the
    other image's stage), the base image given (empty: the Dockerfile's default) and the files its ``COPY``
    instructions take, by path and bytes."""
    digest = hashlib.sha256("\n".join(stage_instructions(role)).encode() + b"\0" + base_image.encode() + b"\0")
    for source in dockerfile_sources(role):
        found = ROOT / source
        if not found.exists():
            raise ImageError(f"the {role} image copies {source}, which does not exist")
        files = sorted(p for p in found.rglob("*") if p.is_file()) if found.is_dir() else [found]
        for file in files:
            if "__pycache__" in file.parts or file.suffix == ".pyc":
                continue
            digest.update(file.relative_to(ROOT).as_posix().encode() + b"\0" + file.read_bytes())
    return f"src-{digest.hexdigest()[:16]}"


@dataclass(frozen=True)
class Image:
    role: str  # training | inference
    repository_uri: str
    tag: str

    @property
    def dockerfile(self) -> str:
        return DOCKERFILE

    @property
    def uri(self) -> str:
        return image_uri(self.repository_uri, self.tag)


def images(outputs: dict[str, str], tag: str = "", base_image: str = "") -> list[Image]:
    """The two images of a deployment, from the bootstrap stack's outputs; each tagged with its own content
    tag unless ``tag`` names images already pushed."""
    return [
        Image(role, outputs[image_output(role, "RepositoryUri")], tag or content_tag(role, base_image))
        for role in ROLES
    ]


@dataclass(frozen=True)
class ContainerEngine:
    """Docker or podman, as the build and the local SageMaker use them. Podman needs no daemon; its storage,
    runtime and rlimits come from its own configuration (``CONTAINERS_CONF``, ``CONTAINERS_STORAGE_CONF``)."""

    name: str
    executable: str

    @classmethod
    def find(cls, wanted: str = "auto") -> ContainerEngine:
        """The engine asked for, or with ``auto`` the first of Docker and podman that answers."""
        if wanted not in ("auto", *ENGINES):
            raise ImageError(f"unknown container engine {wanted!r} (use docker, podman or auto)")
        tried = []
        for name in ENGINES if wanted == "auto" else (wanted,):
            executable = shutil.which(name)
            if executable is None:
                tried.append(f"{name}: not installed")
                continue
            answer = subprocess.run([executable, "info"], capture_output=True, text=True, check=False)
            if answer.returncode == 0:
                return cls(name, executable)
            reason = (answer.stderr.strip().splitlines() or ["no answer"])[-1]
            tried.append(f"{name}: {reason}")
        raise ImageError("no container engine works here (" + "; ".join(tried) + "): install Docker or podman")

    def command(self, *arguments: str) -> list[str]:
        return [self.executable, *arguments]

    def has_image(self, reference: str) -> bool:
        found = subprocess.run(self.command("image", "inspect", reference), capture_output=True, check=False)
        return found.returncode == 0

    def import_image(self, archive: Path, reference: str, changes: list[str]) -> None:
        options = [option for change in changes for option in ("--change", change)]
        run_command(self.command("import", *options, str(archive), reference), print_progress)

    def build(self, image: Image, report: Callable[[str], None], *, base_image: str = "") -> None:
        """Build one image from the repository root, tagged with its URI; the output goes to ``report``."""
        with build_secrets() as secrets:
            arguments = ["build", "--platform", PLATFORM, "-f", image.dockerfile, "--target", image.role]
            arguments += ["-t", image.uri]
            if base_image:
                arguments += ["--build-arg", f"BASE_IMAGE={base_image}"]
            for name, path in secrets.items():
                arguments += ["--secret", f"id={name},src={path}"]
            run_command(self.command(*arguments, "."), report, environment={"DOCKER_BUILDKIT": "1"})

    def login(self, registry: str, user: str, password: str, report: Callable[[str], None]) -> None:
        run_command(self.command("login", "--username", user, "--password-stdin", registry), report, stdin=password)

    def push(self, image: Image, report: Callable[[str], None]) -> None:
        run_command(self.command("push", image.uri), report)


def host_ca_bundle() -> Path | None:
    """The CA bundle this host trusts (a proxy's CA included), as pip and boto3 are told of it, else the system's."""
    for variable in _CA_BUNDLE_VARIABLES:
        value = os.environ.get(variable)
        if value and Path(value).is_file():
            return Path(value)
    return _SYSTEM_CA_BUNDLE if _SYSTEM_CA_BUNDLE.is_file() else None


def host_pip_settings() -> dict[str, str]:
    """The host's pip settings about reaching an index (``pip config list``: files and ``PIP_*`` variables);
    index URLs that are local paths are left out, since the build cannot see them."""
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=False
    ).stdout
    from_files: dict[str, str] = {}
    from_environment: dict[str, str] = {}  # PIP_* variables win over files, as in pip itself
    for line in listed.splitlines():
        key, _, value = line.partition("=")
        name = key.rsplit(".", 1)[-1]
        if name not in PIP_NETWORK_SETTINGS:
            continue
        value = value.strip().strip("'\"")
        if name.endswith("index-url"):
            value = " ".join(url for url in value.split() if url.startswith(("http://", "https://")))
        if value:
            (from_environment if key.startswith(":env:") else from_files)[name] = value
    return {**from_files, **from_environment}


@contextmanager
def build_secrets() -> Iterator[dict[str, Path]]:
    """The build secrets the Dockerfiles mount: ``ca-bundle`` (the host's CA bundle) and ``pip-conf`` (a pip
    configuration with the host's network settings, trusting that bundle)."""
    ca_bundle = host_ca_bundle()
    settings = host_pip_settings()
    if ca_bundle is not None:
        settings["cert"] = CA_BUNDLE_TARGET
    with tempfile.TemporaryDirectory(prefix="fhe-build-") as folder:
        pip_conf = Path(folder) / "pip.conf"
        pip_conf.write_text("[global]\n" + "".join(f"{k} = {v}\n" for k, v in sorted(settings.items())))
        secrets = {"pip-conf": pip_conf}
        if ca_bundle is not None:
            secrets["ca-bundle"] = ca_bundle
        yield secrets


def build_and_push(
    wanted: list[Image],
    report: Callable[[str], None],
    *,
    engine: str = "auto",
    base_image: str = "",
    push: bool = True,
) -> None:
    """Build each image with Docker or podman, then (``push``) log in to ECR and push them; a failed step stops
    with its output."""
    found = ContainerEngine.find(engine)
    for image in wanted:
        report(f"building {image.uri} with {found.name}")
        found.build(image, report, base_image=base_image)
    if not push:
        return
    authorization = aws.client("ecr").get_authorization_token()["authorizationData"][0]
    user, _, password = base64.b64decode(authorization["authorizationToken"]).decode().partition(":")
    found.login(authorization["proxyEndpoint"].removeprefix("https://"), user, password, report)
    for image in wanted:
        found.push(image, report)


def print_progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def run_command(
    command: list[str],
    report: Callable[[str], None],
    *,
    stdin: str | None = None,
    environment: dict[str, str] | None = None,
) -> None:
    """Run a command of the image work from the repository root, its output passed on line by line as it comes;
    a failure raises ImageError with the output's last lines."""
    shown = " ".join(command)
    report(f"$ {shown}")
    tail: list[str] = []
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(environment or {})},
    )
    if stdin is not None and process.stdin is not None:
        process.stdin.write(stdin)
        process.stdin.close()
    assert process.stdout is not None
    for line in process.stdout:
        report(line.rstrip())
        tail = [*tail[-19:], line.rstrip()]
    if process.wait() != 0:
        raise ImageError(f"`{shown}` failed ({process.returncode}):\n" + "\n".join(tail))
