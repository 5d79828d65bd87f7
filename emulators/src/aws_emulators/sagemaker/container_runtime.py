"""How the local SageMaker runs a container: a command standing in for the image, as a subprocess (``process``:
fast, no images needed; the commands come from the configuration), or the image itself (``podman`` or
``docker``), as SageMaker runs it.

Either way the container gets what SageMaker gives it: its ``/opt/ml`` tree (inputs, configuration,
hyperparameters, the model; outputs are read back from it), the job's or model's environment, the AWS endpoint
URLs and region, and temporary credentials for its role from STS AssumeRole. A process finds its ``/opt/ml`` under
``$SAGEMAKER_CONTAINER_ROOT``; with an engine, ``/opt/ml`` is a bind mount of the job's folder and the container
shares the host's network, so loopback reaches the local AWS.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from aws_emulators.sagemaker.aws_clients import AwsClients, region_from_environment
from aws_emulators.sagemaker.configuration import RUNTIMES

# Where the services are, for the code inside: the same variables botocore reads outside.
_AWS_SETTINGS = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ENDPOINT_URL_SNS",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_CA_BUNDLE",  # a local AWS's certificate authority (an engine mounts it at the same path)
)
_CREDENTIALS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
SESSION_SECONDS = 3600
ROOT_VARIABLE = "SAGEMAKER_CONTAINER_ROOT"  # where a process finds what a container finds at /

__all__ = ["RUNTIMES", "Container", "ContainerError", "EngineRuntime", "ProcessRuntime", "Runtime", "runtime"]


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

    def ensure_image(self, image_uri: str) -> None:
        """Refuse an image this runtime cannot run (ContainerError), before anything is fetched for it."""
        ...

    def command(self, container: Container) -> tuple[list[str], dict[str, str]]:
        """The command line and process environment that run ``container`` in the foreground."""
        ...

    def remove(self, name: str) -> None:
        """Remove a container left running by an earlier server (nothing to do for a process)."""
        ...


def aws_environment(role_arn: str | None, aws: AwsClients | None = None) -> dict[str, str]:
    """The AWS settings a container gets: endpoints and region from this process, and credentials for
    ``role_arn`` from STS AssumeRole, as SageMaker hands a job or a model its role's session. Without a role a
    container gets no credentials at all: this process's are the administrator's."""
    if not role_arn:
        raise ContainerError("SageMaker runs a container only under its role, and none was given")
    aws = aws or AwsClients(region_from_environment())
    environment = {name: os.environ[name] for name in _AWS_SETTINGS if os.environ.get(name)}
    environment.setdefault("AWS_REGION", aws.region)
    try:
        return {**environment, **aws.role_credentials(role_arn, "SageMaker", SESSION_SECONDS)}
    except Exception as error:
        raise ContainerError(f"could not assume the role {role_arn}: {error}") from error


class ProcessRuntime:
    """The command standing in for each image (by its repository name), with ``SAGEMAKER_CONTAINER_ROOT``
    moving ``/``. A job that names its own entry point runs that; a command's ``python`` or ``python3`` is
    ``python`` (by default the interpreter this process runs under)."""

    name = "process"

    def __init__(self, commands: dict[str, list[str]], python: str = "") -> None:
        self.commands = {name: list(command) for name, command in commands.items()}
        self.python = python or sys.executable

    def stand_in(self, image_uri: str) -> list[str]:
        """The command standing in for ``image_uri``: its repository's name, or the name's last "-" part."""
        repository = image_uri.rsplit("/", 1)[-1].split("@", 1)[0].split(":", 1)[0]
        for name, command in self.commands.items():
            if repository == name or repository.endswith(f"-{name}"):
                return list(command)
        known = ", ".join(self.commands) or "none: start the local SageMaker with --process-command"
        raise ContainerError(f"image {image_uri} has no command standing in for it here (configured: {known})")

    def ensure_image(self, image_uri: str) -> None:
        self.stand_in(image_uri)

    def command(self, container: Container) -> tuple[list[str], dict[str, str]]:
        argv = list(container.entrypoint or self.stand_in(container.image_uri))
        if argv[0] in ("python", "python3"):
            argv[0] = self.python
        environment = {
            **{k: v for k, v in os.environ.items() if k not in _CREDENTIALS},
            **container.environment,
            ROOT_VARIABLE: str(container.root),
        }
        return [*argv, *container.arguments], environment

    def remove(self, name: str) -> None:
        return None


@dataclass(frozen=True)
class ContainerEngine:
    """podman or Docker on this machine."""

    name: str
    executable: str

    @classmethod
    def find(cls, name: str) -> ContainerEngine:
        """``name``'s engine, once it answers ``info``."""
        if name not in ("podman", "docker"):
            raise ContainerError(f"unknown container engine {name!r} (use podman or docker)")
        executable = shutil.which(name)
        if executable is None:
            raise ContainerError(f"{name} is not installed")
        answer = subprocess.run([executable, "info"], capture_output=True, text=True, check=False)
        if answer.returncode != 0:
            reason = (answer.stderr.strip().splitlines() or ["no answer"])[-1]
            raise ContainerError(f"{name} does not work here: {reason}")
        return cls(name, executable)

    def command(self, *arguments: str) -> list[str]:
        return [self.executable, *arguments]

    def has_image(self, reference: str) -> bool:
        found = subprocess.run(self.command("image", "inspect", reference), capture_output=True, check=False)
        return found.returncode == 0


class EngineRuntime:
    """The image itself, run by podman or Docker as SageMaker runs it: ``<image> train``, ``<image> serve`` or the
    processing job's own entry point, ``/opt/ml`` mounted, on the host's network. The image must be in the
    engine's storage under the URI the job names (the local SageMaker never pulls)."""

    def __init__(self, engine: str) -> None:
        self.engine = ContainerEngine.find(engine)
        self.name = self.engine.name

    def ensure_image(self, image_uri: str) -> None:
        if not self.engine.has_image(image_uri):
            raise ContainerError(
                f"image {image_uri} is not in {self.name}'s storage: build or load it there under that name first "
                "(the local SageMaker never pulls)"
            )

    def command(self, container: Container) -> tuple[list[str], dict[str, str]]:
        self.ensure_image(container.image_uri)
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


def runtime(name: str, process_commands: dict[str, list[str]] | None = None, process_python: str = "") -> Runtime:
    if name not in RUNTIMES:
        raise ContainerError(f"unknown runtime {name!r} (use {', '.join(RUNTIMES)})")
    return ProcessRuntime(process_commands or {}, process_python) if name == "process" else EngineRuntime(name)
