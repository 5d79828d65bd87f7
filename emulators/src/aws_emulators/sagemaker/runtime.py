"""How the local SageMaker runs a container: the image's entry point from the source tree as a subprocess
(``process``, the default: fast, no images needed), or the built image itself (``podman`` or ``docker``), as
SageMaker runs it.

Either way the container gets what SageMaker gives it: its ``/opt/ml`` tree (inputs, configuration,
hyperparameters, the model; outputs are read back from it), the job's or model's environment, the AWS endpoint
URLs and region, and temporary credentials for its role from STS AssumeRole. With an engine, ``/opt/ml`` is a
bind mount of the job's folder and the container shares the host's network, so loopback reaches the local AWS.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from common import aws

RUNTIMES = ("process", "podman", "docker")
# What each image runs in the ``process`` runtime, by repository name: a deployment's repositories are
# "<prefix>-training" and "<prefix>-inference" (infrastructure/bootstrap.yaml), so the suffix says which it is.
# "python" is the interpreter of the project's venv, where the containers' code is installed as in the images.
SOURCE_ENTRYPOINTS: dict[str, list[str]] = {
    "training": ["python", "-m", "containers.training"],
    "inference": ["python", "-m", "containers.inference"],
}
# Where the services are, for the code inside: the same variables botocore reads outside.
_AWS_SETTINGS = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ENDPOINT_URL_SNS",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_CA_BUNDLE",  # the local stack's certificate authority (an engine mounts it at the same path)
)
_CREDENTIALS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
SESSION_SECONDS = 3600


class ContainerError(Exception):
    """A container could not be started: its image is missing, its role cannot be assumed…"""


@dataclass(frozen=True)
class Container:
    """One container to run: the image and arguments SageMaker would use, and the host folder standing in for
    the container's ``/`` (its ``opt/ml`` is the container's ``/opt/ml``)."""

    name: str
    image_uri: str
    arguments: list[str]
    root: Path
    environment: dict[str, str] = field(default_factory=dict)
    entrypoint: list[str] | None = None


class Runtime(Protocol):
    name: str

    def command(self, container: Container) -> tuple[list[str], dict[str, str]]:
        """The command line and process environment that run ``container`` in the foreground."""
        ...

    def remove(self, name: str) -> None:
        """Remove a container left running by an earlier server (nothing to do for a process)."""
        ...


def source_entrypoint(image_uri: str) -> list[str]:
    """The source-tree command standing in for an image, by its repository name."""
    images = dict(SOURCE_ENTRYPOINTS)
    if os.environ.get("LOCAL_SAGEMAKER_IMAGES"):
        images.update(json.loads(os.environ["LOCAL_SAGEMAKER_IMAGES"]))
    name = image_uri.rsplit("/", 1)[-1].split("@", 1)[0].split(":", 1)[0]
    name = next((known for known in images if name == known or name.endswith(f"-{known}")), name)
    if name not in images:
        raise ContainerError(f"image {image_uri} is not available to the local SageMaker (known: {', '.join(images)})")
    return list(images[name])


def aws_environment(role_arn: str | None) -> dict[str, str]:
    """The AWS settings a container gets: endpoints and region from this process, and credentials for
    ``role_arn`` from STS AssumeRole, as SageMaker hands a job or a model its role's session. Without a role a
    container gets no credentials at all: this process's are the administrator's."""
    if not role_arn:
        raise ContainerError("SageMaker runs a container only under its role, and none was given")
    environment = {name: os.environ[name] for name in _AWS_SETTINGS if os.environ.get(name)}
    environment.setdefault("AWS_REGION", aws.region())
    try:
        return {**environment, **aws.role_credentials(role_arn, "SageMaker", SESSION_SECONDS)}
    except Exception as error:
        raise ContainerError(f"could not assume the role {role_arn}: {error}") from error


class ProcessRuntime:
    """The image's entry point from this source tree, with ``SAGEMAKER_CONTAINER_ROOT`` moving ``/opt/ml``."""

    name = "process"

    def command(self, container: Container) -> tuple[list[str], dict[str, str]]:
        entrypoint = container.entrypoint or source_entrypoint(container.image_uri)
        argv = [sys.executable if part in ("python", "python3") else part for part in entrypoint]
        environment = {
            **{k: v for k, v in os.environ.items() if k not in _CREDENTIALS},
            **container.environment,
            "SAGEMAKER_CONTAINER_ROOT": str(container.root),
        }
        return [*argv, *container.arguments], environment

    def remove(self, name: str) -> None:
        return None


class EngineRuntime:
    """The built image, run by podman or Docker as SageMaker runs it: ``<image> train``, ``<image> serve`` or the
    processing job's own entry point, ``/opt/ml`` mounted, on the host's network. The image must be in the
    engine's storage under the URI the job names (the local SageMaker never pulls)."""

    def __init__(self, engine: str) -> None:
        from infrastructure.images import ContainerEngine, ImageError

        try:
            self.engine = ContainerEngine.find(engine)
        except ImageError as error:
            raise ContainerError(str(error)) from None
        self.name = self.engine.name

    def command(self, container: Container) -> tuple[list[str], dict[str, str]]:
        if not self.engine.has_image(container.image_uri):
            raise ContainerError(
                f"image {container.image_uri} is not in {self.name}'s storage: build it first "
                "(fhe-deploy images --no-push, or python -m infrastructure.images)"
            )
        (container.root / "opt/ml").mkdir(parents=True, exist_ok=True)
        argv = ["run", "--rm", "--name", container.name, "--network", "host", "--pull", "never"]
        argv += ["--volume", f"{container.root / 'opt/ml'}:/opt/ml"]
        if bundle := container.environment.get("AWS_CA_BUNDLE"):
            argv += ["--volume", f"{bundle}:{bundle}:ro"]
        # Names only: each value comes from the engine's own environment, so no credential is on a command line.
        for name in sorted(container.environment):
            argv += ["--env", name]
        if container.entrypoint:
            argv += ["--entrypoint", json.dumps(container.entrypoint)]
        argv += [container.image_uri, *container.arguments]
        return self.engine.command(*argv), {**os.environ, **container.environment}

    def remove(self, name: str) -> None:
        subprocess.run(self.engine.command("rm", "--force", name), capture_output=True, check=False)


def runtime(name: str) -> Runtime:
    if name not in RUNTIMES:
        raise ContainerError(f"unknown runtime {name!r} (use {', '.join(RUNTIMES)})")
    return ProcessRuntime() if name == "process" else EngineRuntime(name)
