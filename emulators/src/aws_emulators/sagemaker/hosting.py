"""Hosting an endpoint's serving container as SageMaker does: the model extracted into ``/opt/ml/model`` of the
container's own root, ``<image> serve`` run by the runtime (a process or an engine's container) on a free
loopback port (``SAGEMAKER_BIND_TO_PORT``), healthy once ``GET /ping`` answers; and stopped again, even when an
earlier run left it behind."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import tarfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aws_emulators.sagemaker.aws_clients import AwsClients
from aws_emulators.sagemaker.backend import Backend
from aws_emulators.sagemaker.container_runtime import Container, Runtime, aws_environment, runtime
from aws_emulators.sagemaker.s3_objects import S3Uri

log = logging.getLogger("aws_emulators.sagemaker.hosting")

ROLE_SESSION_REUSE_S = 45 * 60  # the role's sessions last an hour
PID_FILE = "container.pid"
CONTAINER_FILE = "container.json"  # which runtime runs it, under which container name


def container_name(endpoint: str, generation: str) -> str:
    """The engine's name for one generation of an endpoint's serving container."""
    return f"{endpoint}-{generation}"


@dataclass
class Host:
    """One instance of an endpoint: a running serving process and the workers feeding it from the endpoint's
    queue."""

    endpoint: str
    generation: str
    process: subprocess.Popen[bytes]
    port: int
    root: Path
    config: dict[str, Any]
    role_arn: str  # the model's execution role, which SageMaker's own calls for it use
    aws: AwsClients
    workers: list[threading.Thread] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)
    busy: int = 0  # invocations in flight
    _session: Any = None
    _session_since: float = 0.0

    def client(self, service: str) -> Any:
        """A client under the model's execution role, as SageMaker reads the request and writes the response and
        the notification of an asynchronous invocation on AWS. The session is assumed again before its hour runs
        out."""
        if self._session is None or time.monotonic() - self._session_since > ROLE_SESSION_REUSE_S:
            self._session, self._session_since = self.aws.role_session(self.role_arn, "SageMaker"), time.monotonic()
        return self._session.client(service)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def container_name(self) -> str:
        return container_name(self.endpoint, self.generation)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def extract_model(archive: Path, destination: Path) -> None:
    """Unpack ``model.tar.gz`` as SageMaker does, refusing what a model archive never holds: a member that is
    absolute, climbs out with ``..``, is a link or a device (tarfile's ``data`` filter)."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            tar.extractall(destination, filter="data")
    except (tarfile.TarError, OSError) as error:
        raise RuntimeError(f"the model archive cannot be extracted: {error}") from None


def launch(backend: Backend, endpoint: str, config: dict[str, Any], model: dict[str, Any]) -> Host:
    """Start the serving container of ``model`` for ``endpoint`` and wait until it answers ``/ping``."""
    runtime, aws = backend.runtime, backend.aws
    container = model["PrimaryContainer"]
    role = model.get("ExecutionRoleArn")
    if not role:  # a model stored before CreateModel required its role: never served with this server's credentials
        raise RuntimeError(f"model {model['ModelName']} has no execution role; create it again with ExecutionRoleArn")
    runtime.ensure_image(container["Image"])
    generation = uuid.uuid4().hex[:8]
    root = backend.state_dir / "endpoints" / endpoint / generation
    model_dir = root / "opt/ml/model"
    model_dir.mkdir(parents=True)
    source = S3Uri.parse(container["ModelDataUrl"])
    archive = root / "model.tar.gz"
    # SageMaker reads the model under the model's execution role.
    aws.role_session(role, "SageMaker").client("s3").download_file(source.bucket, source.key, str(archive))
    extract_model(archive, model_dir)
    archive.unlink()
    port = free_port()
    # SageMaker serves on 8080; instances here share the host's network, so each gets its own port.
    environment = {
        **aws_environment(role, aws),
        **backend.configuration.serving_environment,
        **{k: str(v) for k, v in (container.get("Environment") or {}).items()},
        "SAGEMAKER_BIND_TO_PORT": str(port),
    }
    serving = Container(container_name(endpoint, generation), container["Image"], ["serve"], root, environment)
    command, process_environment = runtime.command(serving)
    log_file = (root / "container.log").open("ab")
    process = subprocess.Popen(command, cwd=root, env=process_environment, stdout=log_file, stderr=subprocess.STDOUT)
    log_file.close()
    (root / CONTAINER_FILE).write_text(json.dumps({"runtime": runtime.name, "name": serving.name}))
    (root / PID_FILE).write_text(str(process.pid))
    host = Host(endpoint, generation, process, port, root, config, role, aws)
    timeout = backend.configuration.endpoint_start_timeout_s
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = (root / "container.log").read_text(errors="replace").strip().splitlines()[-5:]
            raise RuntimeError(f"the serving container exited with {process.returncode}: " + " | ".join(tail))
        try:
            with urllib.request.urlopen(host.url + "/ping", timeout=2) as response:  # noqa: S310 - loopback
                if response.status == 200:
                    return host
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    process.kill()
    runtime.remove(serving.name)
    raise RuntimeError(f"the serving container did not answer /ping within {timeout:.0f} s")


def terminate(runtime: Runtime, host: Host) -> None:
    """Stop the serving container and drop its model copy."""
    host.process.terminate()
    try:
        host.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        host.process.kill()
        host.process.wait()
    runtime.remove(host.container_name)
    shutil.rmtree(host.root / "opt/ml/model", ignore_errors=True)
    (host.root / PID_FILE).unlink(missing_ok=True)


def stop_orphaned_containers(state_dir: Path) -> list[int]:
    """Terminate every serving process recorded under ``state_dir`` that is still alive, and remove the engine
    containers they ran; returns their pids."""
    stopped = []
    for pid_file in sorted((state_dir / "endpoints").glob(f"*/*/{PID_FILE}")):
        try:
            pid = int(pid_file.read_text().strip())
            os.kill(pid, signal.SIGTERM)
            stopped.append(pid)
        except (ValueError, ProcessLookupError, PermissionError):
            pass
        pid_file.unlink(missing_ok=True)
        record = pid_file.parent / CONTAINER_FILE
        if record.exists():
            recorded = json.loads(record.read_text())
            if recorded["runtime"] != "process":
                runtime(recorded["runtime"]).remove(recorded["name"])
            record.unlink()
        shutil.rmtree(pid_file.parent / "opt/ml/model", ignore_errors=True)
    if stopped:
        log.warning("stopped %d serving process(es) left by an earlier run: %s", len(stopped), stopped)
    return stopped
