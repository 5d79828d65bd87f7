"""The training and inference container images: a tag from the content of what goes into them, and the build,
login and push steps to the deployment's ECR repositories (Docker is needed only for this step)."""

from __future__ import annotations

import base64
import hashlib
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

from common import aws
from infrastructure.templates import ROOT

# What the Dockerfiles copy (keep in step with them): the tag changes exactly when an image would.
_CONTEXT = ("pyproject.toml", "constraints.txt", "README.md", "common", "containers", "pipelines", "local")


class ImageError(RuntimeError):
    """An image could not be built or pushed."""


@dataclass(frozen=True)
class Image:
    role: str  # training | inference
    repository_uri: str
    tag: str

    @property
    def dockerfile(self) -> str:
        return f"containers/{self.role}/Dockerfile"

    @property
    def uri(self) -> str:
        return f"{self.repository_uri}:{self.tag}"

    def commands(self) -> list[list[str]]:
        return [["docker", "build", "-f", self.dockerfile, "-t", self.uri, "."], ["docker", "push", self.uri]]


def content_tag() -> str:
    """``src-`` and 16 hex digits of the sha256 over the build context's files (their paths and bytes)."""
    digest = hashlib.sha256()
    paths = []
    for name in _CONTEXT:
        path = ROOT / name
        paths += sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for path in paths:
        if "__pycache__" in path.parts or path.suffix == ".pyc":
            continue
        digest.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + path.read_bytes())
    return f"src-{digest.hexdigest()[:16]}"


def images(outputs: dict[str, str], tag: str) -> list[Image]:
    """The two images of a deployment, from the bootstrap stack's outputs."""
    return [
        Image("training", outputs["TrainingRepositoryUri"], tag),
        Image("inference", outputs["InferenceRepositoryUri"], tag),
    ]


def build_and_push(wanted: list[Image], report: Callable[[str], None]) -> None:
    """Log Docker in to the registry, then build and push each image; a failed step stops with its output."""
    docker = shutil.which("docker")
    if docker is None:
        raise ImageError(
            "building images needs Docker, which is not installed here: run `fhe-deploy images` on a machine that "
            "has it, or deploy without --build-images and pass --image-tag of images already pushed"
        )
    authorization = aws.client("ecr").get_authorization_token()["authorizationData"][0]
    user, _, password = base64.b64decode(authorization["authorizationToken"]).decode().partition(":")
    registry = authorization["proxyEndpoint"].removeprefix("https://")
    _run([docker, "login", "--username", user, "--password-stdin", registry], report, stdin=password)
    for image in wanted:
        for command in image.commands():
            _run([docker, *command[1:]], report)


def _run(command: list[str], report: Callable[[str], None], stdin: str | None = None) -> None:
    shown = " ".join(command)
    report(f"$ {shown}")
    result = subprocess.run(command, cwd=ROOT, input=stdin, capture_output=True, text=True)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-20:])
        raise ImageError(f"`{shown}` failed ({result.returncode}):\n{tail}")
