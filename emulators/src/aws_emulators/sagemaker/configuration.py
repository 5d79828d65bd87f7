"""What the local SageMaker is told at start: the account and region it answers for, how it runs containers, what
stands in for each image when it runs them as processes, what every serving container is given, and its timings.

It comes from a JSON file (``--config``), whose keys are the fields below, and from command-line options, which win
over the file. Nothing here names a product: the images, their entry points and their settings are whatever the
starting stack passes."""

from __future__ import annotations

import dataclasses
import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aws_emulators.sagemaker.aws_clients import region_from_environment

RUNTIMES = ("process", "podman", "docker")


class ConfigurationError(ValueError):
    """A configuration the local SageMaker cannot start with; the message names the setting."""


@dataclass(frozen=True)
class Configuration:
    # The account in every ARN the service answers with.
    account_id: str = "000000000000"
    # The region of its ARNs and of the AWS clients it calls.
    region: str = field(default_factory=region_from_environment)
    # How jobs and endpoints run: ``process`` (the command standing in for the image, from process_commands) or
    # the image itself in ``podman`` or ``docker``.
    runtime: str = "process"
    # For the process runtime: image repository name -> the command line that stands in for the image. A
    # repository "<anything>-<name>" matches "<name>" too (a deployment's "acme-training" is "training").
    process_commands: dict[str, list[str]] = field(default_factory=dict)
    # For the process runtime: the interpreter that runs a command whose first word is ``python`` or ``python3``
    # (a job's own entry point names the image's interpreter); empty: the one the local SageMaker runs under.
    process_python: str = ""
    # Variables every serving container gets beside the model's own Environment (a loopback bind address, say:
    # instances share the host's network here).
    serving_environment: dict[str, str] = field(default_factory=dict)
    # How long an endpoint's instance has to answer GET /ping before the endpoint fails.
    endpoint_start_timeout_s: float = 300.0
    # How often each endpoint's scaling round runs.
    scaling_period_s: float = 2.0

    def __post_init__(self) -> None:
        if self.runtime not in RUNTIMES:
            raise ConfigurationError(f"runtime {self.runtime!r} is not one of {', '.join(RUNTIMES)}")
        for name, command in self.process_commands.items():
            if not command or not all(isinstance(part, str) and part for part in command):
                raise ConfigurationError(f"process_commands[{name!r}] must be a non-empty list of words")
        if self.endpoint_start_timeout_s <= 0 or self.scaling_period_s <= 0:
            raise ConfigurationError("endpoint_start_timeout_s and scaling_period_s must be positive")

    @property
    def arn_prefix(self) -> str:
        return f"arn:aws:sagemaker:{self.region}:{self.account_id}"

    @classmethod
    def from_file(cls, path: Path) -> Configuration:
        try:
            document = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ConfigurationError(f"the configuration file {path} cannot be read: {error}") from None
        if not isinstance(document, dict):
            raise ConfigurationError(f"the configuration file {path} must hold a JSON object")
        return cls.from_dict(document)

    @classmethod
    def from_dict(cls, document: dict[str, Any]) -> Configuration:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(document) - known)
        if unknown:
            raise ConfigurationError(
                f"unknown configuration keys: {', '.join(unknown)} (known: {', '.join(sorted(known))})"
            )
        try:
            return cls(**document)
        except TypeError as error:
            raise ConfigurationError(str(error)) from None

    def with_changes(self, **changes: Any) -> Configuration:
        """This configuration with ``changes`` (those not None) applied; dictionaries are merged."""
        merged: dict[str, Any] = {}
        for name, value in changes.items():
            if value is None:
                continue
            current = getattr(self, name)
            merged[name] = {**current, **value} if isinstance(current, dict) else value
        return dataclasses.replace(self, **merged)


def assignment(text: str) -> tuple[str, str]:
    """``NAME=VALUE`` from the command line."""
    name, equals, value = text.partition("=")
    if not equals or not name:
        raise ConfigurationError(f"expected NAME=VALUE, not {text!r}")
    return name, value


def process_command(text: str) -> tuple[str, list[str]]:
    """``IMAGE=COMMAND LINE`` from the command line: the command split as a shell would split it."""
    name, command = assignment(text)
    return name, shlex.split(command)
