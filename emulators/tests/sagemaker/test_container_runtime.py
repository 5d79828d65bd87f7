"""How containers run: the process runtime's stand-in commands from the configuration, the engine runtime's
command line (as SageMaker runs an image, no secret on it), and a container's AWS session, its role's own."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from aws_emulators.sagemaker.aws_clients import AwsClients
from aws_emulators.sagemaker.configuration import Configuration, ConfigurationError
from aws_emulators.sagemaker.container_runtime import (
    ROOT_VARIABLE,
    Container,
    ContainerError,
    EngineRuntime,
    ProcessRuntime,
    aws_environment,
)
from aws_emulators.sagemaker.server import arguments, configuration_from


def _fake_engine(folder: Path, name: str = "podman") -> Path:
    """An engine that answers ``info``, knows every image, and records the arguments of its last other call."""
    folder.mkdir(exist_ok=True)
    script = folder / name
    script.write_text(f'#!/bin/sh\n[ "$1" = info ] && exit 0\nprintf "%s\\n" "$@" > {folder}/args\nexit 0\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


def test_the_engine_runtime_runs_the_image_as_sagemaker_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(_fake_engine(tmp_path / "bin").parent))
    runtime = EngineRuntime("podman")
    container = Container(
        "preprocess-1",
        "1.dkr.ecr.r.amazonaws.com/acme-training:src-0123456789abcdef",
        ["--label-column", "label"],
        tmp_path / "job",
        {"AWS_SECRET_ACCESS_KEY": "secret-value", "AWS_ENDPOINT_URL": "http://127.0.0.1:4566"},
        entrypoint=["python", "-m", "acme.training", "preprocess"],
    )
    command, environment = runtime.command(container)
    assert command[1:9] == ["run", "--rm", "--name", "preprocess-1", "--network", "host", "--pull", "never"]
    assert f"{tmp_path / 'job/opt/ml'}:/opt/ml" in command
    assert command[command.index("--entrypoint") + 1] == json.dumps(container.entrypoint)
    assert command[-3:] == [container.image_uri, "--label-column", "label"]
    # Variables by name only: their values reach the container through the engine's environment.
    assert "AWS_SECRET_ACCESS_KEY" in command and not any("secret-value" in part for part in command)
    assert environment["AWS_SECRET_ACCESS_KEY"] == "secret-value"


def test_without_a_working_engine_the_error_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    broken = tmp_path / "docker"
    broken.write_text("#!/bin/sh\necho 'Cannot connect to the Docker daemon' >&2\nexit 1\n")
    broken.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ContainerError, match=r"docker does not work here: Cannot connect"):
        EngineRuntime("docker")
    with pytest.raises(ContainerError, match="podman is not installed"):
        EngineRuntime("podman")


def test_the_process_runtime_runs_the_configured_stand_in_without_the_servers_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "server-key")
    runtime = ProcessRuntime({"training": ["/usr/bin/python3", "-m", "acme.training"]})
    session = {"AWS_ACCESS_KEY_ID": "role-key", "AWS_SESSION_TOKEN": "role-token"}
    command, environment = runtime.command(
        Container("job", "1.dkr.ecr.r.amazonaws.com/acme-training:1", ["train"], tmp_path, {**session, "X": "1"})
    )
    assert command == ["/usr/bin/python3", "-m", "acme.training", "train"]
    assert environment["AWS_ACCESS_KEY_ID"] == "role-key" and environment["X"] == "1"
    assert environment[ROOT_VARIABLE] == str(tmp_path)
    own = Container("job", "acme-training:1", [], tmp_path, entrypoint=["python3", "-m", "acme.preprocess"])
    python = ProcessRuntime({}, python="/opt/venv/bin/python").command(own)[0]
    assert python == ["/opt/venv/bin/python", "-m", "acme.preprocess"], "the job's entry point, on that interpreter"
    bare = Container("job", "acme-training:1", [], tmp_path)
    assert "AWS_ACCESS_KEY_ID" not in runtime.command(bare)[1], "no role given: no credentials at all"
    with pytest.raises(ContainerError, match=r"acme-unknown:1 has no command standing in for it here \(configured: "):
        runtime.command(Container("job", "acme-unknown:1", [], tmp_path))


def test_a_container_gets_its_roles_session_from_sts(monkeypatch: pytest.MonkeyPatch) -> None:
    role = "arn:aws:iam::123456789012:role/model-creator"
    sts = boto3.client("sts", region_name="us-east-1")
    monkeypatch.setattr(AwsClients, "client", lambda self, service: sts)
    with Stubber(sts) as stubbed:
        credentials = {"AccessKeyId": "ASIAROLEXAMPLE0001", "SecretAccessKey": "role-secret", "SessionToken": "t",
                       "Expiration": "2030-01-01T00:00:00Z"}  # fmt: skip
        expected = {"RoleArn": role, "RoleSessionName": "SageMaker", "DurationSeconds": 3600}
        stubbed.add_response("assume_role", {"Credentials": credentials}, expected)
        session = aws_environment(role, AwsClients("eu-west-1"))
        stubbed.assert_no_pending_responses()
    assert session["AWS_ACCESS_KEY_ID"] == "ASIAROLEXAMPLE0001" and session["AWS_SESSION_TOKEN"] == "t"
    assert session["AWS_REGION"] == "us-east-1", "this process's region variable, as botocore reads it"
    for role_arn in (None, ""):
        with pytest.raises(ContainerError, match="only under its role"):
            aws_environment(role_arn)


def _configuration(tmp_path: Path, argv: list[str], document: dict[str, Any] | None = None) -> Configuration:
    if document is not None:
        (tmp_path / "config.json").write_text(json.dumps(document))
        argv = ["--config", str(tmp_path / "config.json"), *argv]
    return configuration_from(arguments().parse_args(argv))


def test_the_configuration_comes_from_a_file_and_the_options_win(tmp_path: Path) -> None:
    document = {
        "region": "eu-west-1",
        "process_commands": {"training": ["python3", "-m", "a.training"], "inference": ["python3", "-m", "a.serve"]},
        "serving_environment": {"BIND_HOST": "127.0.0.1"},
    }
    argv = ["--process-command", "inference=/opt/py/bin/python -m 'b serve'", "--serving-env", "LOG=debug"]
    configuration = _configuration(tmp_path, argv, document)
    assert configuration.process_commands == {
        "training": ["python3", "-m", "a.training"],
        "inference": ["/opt/py/bin/python", "-m", "b serve"],
    }
    assert configuration.serving_environment == {"BIND_HOST": "127.0.0.1", "LOG": "debug"}
    assert configuration.arn_prefix == "arn:aws:sagemaker:eu-west-1:000000000000"
    assert _configuration(tmp_path, ["--scaling-period", "0.5"]).scaling_period_s == 0.5
    with pytest.raises(ConfigurationError, match="unknown configuration keys: images"):
        _configuration(tmp_path, [], {"images": {}})
    with pytest.raises(ConfigurationError, match="runtime 'lxc' is not one of process, podman, docker"):
        Configuration(runtime="lxc")
    with pytest.raises(ConfigurationError, match=r"process_commands\['training'\] must be a non-empty list"):
        Configuration(process_commands={"training": []})
