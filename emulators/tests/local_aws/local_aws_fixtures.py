"""The local AWS started as the development stack starts it (``aws_emulators.local_aws.launch``: ministack's own
venv, loopback, TLS, IAM enforced, KMS trusting an attestation root of the tests' own) beside the local SageMaker
started from its own entry point, whose endpoints serve a small stand-in container (``serving_container.py``)."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3

from aws_emulators.local_aws import launch

REPO = Path(__file__).resolve().parents[3]
REGION = "us-east-1"
ACCOUNT = "000000000000"
HOST = "127.0.0.1"
ADMIN = {"aws_access_key_id": "test", "aws_secret_access_key": "test"}
START_TIMEOUT_S = 120.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@dataclass
class LocalAws:
    url: str
    sagemaker_url: str
    authority: Path

    def client(self, service: str, **credentials: str) -> Any:
        endpoint = self.sagemaker_url if service in ("sagemaker", "application-autoscaling") else self.url
        return boto3.client(
            service,
            region_name=REGION,
            endpoint_url=endpoint,
            verify=str(self.authority),
            **(credentials or ADMIN),
        )


def _wait_healthy(url: str, authority: Path, process: subprocess.Popen[bytes], log: Path) -> None:
    context = ssl.create_default_context(cafile=str(authority))
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=2, context=context) as response:  # noqa: S310 - loopback
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer; its log ends:\n" + "\n".join(log.read_text().splitlines()[-20:]))


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@contextmanager
def running_local_aws(
    state: Path, test_authority: tuple[Path, Path, Path], attestation_root: Path
) -> Iterator[LocalAws]:
    """The local AWS and the local SageMaker, on free loopback ports with their state under ``state``; stopped
    after."""
    authority, certificate, key = test_authority
    python = launch.ensure_ministack(Path(os.environ.get("FHE_MINISTACK_VENV", REPO / ".local-stack/ministack-venv")))
    aws_url, sagemaker_url = f"https://{HOST}:{_free_port()}", f"https://{HOST}:{_free_port()}"
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    aws_environment = launch.environment(
        host=HOST,
        port=int(aws_url.rsplit(":", 1)[1]),
        state_dir=state / "ministack",
        certificate=certificate,
        key=key,
        ca_bundle=authority,
        sagemaker_url=sagemaker_url,
        attestation_root=attestation_root,
    )
    sagemaker_environment = {
        "AWS_ENDPOINT_URL": aws_url,
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_CA_BUNDLE": str(authority),
        "AWS_ACCESS_KEY_ID": ADMIN["aws_access_key_id"],
        "AWS_SECRET_ACCESS_KEY": ADMIN["aws_secret_access_key"],
    }
    sagemaker_command = [sys.executable, "-m", "aws_emulators.sagemaker.server", "--host", HOST]
    sagemaker_command += ["--port", sagemaker_url.rsplit(":", 1)[1], "--state-dir", str(state / "sagemaker")]
    sagemaker_command += ["--tls-certificate", str(certificate), "--tls-key", str(key)]
    stand_in = f"stand-in-serving={sys.executable} {Path(__file__).with_name('serving_container.py')}"
    sagemaker_command += ["--process-command", stand_in, "--serving-env", f"FHE_BIND_HOST={HOST}"]
    sagemaker_command += ["--authorize-with", aws_url]
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for name, command, environment, health in (
            ("local-aws", launch.command(python), aws_environment, aws_url + "/_ministack/health"),
            ("local-sagemaker", sagemaker_command, sagemaker_environment, sagemaker_url + "/health"),
        ):
            log = state / f"{name}.log"
            with log.open("wb") as output:
                processes.append(
                    subprocess.Popen(
                        command,
                        env={**inherited, **environment},
                        stdout=output,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                        start_new_session=True,
                    )
                )
            _wait_healthy(health, authority, processes[-1], log)
        yield LocalAws(aws_url, sagemaker_url, authority)
    finally:
        for process in reversed(processes):
            _stop(process)
