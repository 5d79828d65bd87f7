"""Models, endpoint configurations, asynchronous endpoints and ``InvokeEndpointAsync``.

An endpoint is hosted by running the image's real serving app (``<entry point> serve``) as a subprocess in
its own container root, on a free loopback port, with the model extracted into ``/opt/ml/model``. Async
invocations are queued durably (the store), handed to ``POST /invocations`` by as many worker threads as
``MaxConcurrentInvocationsPerInstance`` allows, and answered as SageMaker does: the response body goes to
``<S3OutputPath>/<inference id>.out`` and a notification to the success topic, or the error body goes to
``<S3FailurePath>/<inference id>-error.out`` and a notification to the error topic.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common.archives import extract_tar
from common.s3uri import S3Uri
from local.ports import free_port
from local.sagemaker.errors import ResourceInUse, ValidationError, required
from local.sagemaker.registry import Registry
from local.sagemaker.runtime import Container, Runtime, aws_environment, runtime
from local.sagemaker.store import Store

log = logging.getLogger("local.sagemaker.endpoints")

START_TIMEOUT_S = float(os.environ.get("LOCAL_SAGEMAKER_ENDPOINT_START_TIMEOUT_S", "300"))
DEFAULT_INVOCATION_TIMEOUT_S = 900
DEFAULT_CONCURRENCY = 4
# Fault injection for tests of the workflow: <state dir>/faults.json holds {"<endpoint>": [{"input_contains":
# "...", "fail_first": n, "delay_seconds": s}, ...]}; an input matching a rule waits s seconds (a slow instance),
# then fails its first n attempts before the container sees it, as a crashed instance would. Read at each
# invocation, so a test can change it while the server runs.
FAULTS_FILE = "faults.json"
PID_FILE = "container.pid"
CONTAINER_FILE = "container.json"  # which runtime runs it, under which container name


def _now() -> float:
    return time.time()


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def container_name(endpoint: str, generation: str) -> str:
    """The engine's name for one generation of an endpoint's serving container."""
    return f"{endpoint}-{generation}"


@dataclass
class Host:
    """One running serving process and the workers feeding it."""

    endpoint: str
    generation: str
    process: subprocess.Popen[bytes]
    port: int
    root: Path
    config: dict[str, Any]
    invocations: queue.Queue[str] = field(default_factory=queue.Queue)
    workers: list[threading.Thread] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def container_name(self) -> str:
        return container_name(self.endpoint, self.generation)


class Endpoints:
    def __init__(
        self,
        store: Store,
        registry: Registry,
        state_dir: Path,
        arn_prefix: str,
        region: str,
        s3: Callable[[], Any],
        sns: Callable[[], Any],
        runtime: Runtime,
    ) -> None:
        self.store = store
        self.runtime = runtime
        self.registry = registry
        self.state_dir = state_dir
        self.arn_prefix = arn_prefix
        self.region = region
        self._s3 = s3
        self._sns = sns
        self._hosts: dict[str, Host] = {}
        self._lock = threading.RLock()
        self._attempts: dict[str, int] = {}

    # ---------------------------------------------------------------- models and endpoint configurations

    def create_model(self, body: dict[str, Any]) -> dict[str, Any]:
        name = required(body, "ModelName")
        if self.store.get("model", name):
            raise ValidationError(f'Cannot create already existing model "{self.arn_prefix}:model/{name.lower()}".')
        container = body.get("PrimaryContainer") or (body.get("Containers") or [None])[0]
        if not isinstance(container, dict):
            raise ValidationError("PrimaryContainer is required")
        if container.get("ModelPackageName"):
            package = self.registry.describe_model_package({"ModelPackageName": container["ModelPackageName"]})
            spec = package["InferenceSpecification"]["Containers"][0]
            container = {**spec, **{k: v for k, v in container.items() if k != "ModelPackageName"}}
            container["ModelPackageName"] = package["ModelPackageArn"]
        if not container.get("Image") or not container.get("ModelDataUrl"):
            raise ValidationError("the model's container needs an Image and a ModelDataUrl")
        model = {
            "ModelName": name,
            "ModelArn": f"{self.arn_prefix}:model/{name.lower()}",
            "PrimaryContainer": container,
            "ExecutionRoleArn": body.get("ExecutionRoleArn", ""),
            "CreationTime": _now(),
        }
        self.store.put("model", name, model)
        return {"ModelArn": model["ModelArn"]}

    def describe_model(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._get("model", required(body, "ModelName"), "Could not find model")

    def delete_model(self, body: dict[str, Any]) -> dict[str, Any]:
        name = required(body, "ModelName")
        self._get("model", name, "Could not find model")
        self.store.delete("model", name)
        return {}

    def create_endpoint_config(self, body: dict[str, Any]) -> dict[str, Any]:
        name = required(body, "EndpointConfigName")
        if self.store.get("endpoint-config", name):
            raise ValidationError(f'Cannot create already existing endpoint configuration "{name}".')
        variants = body.get("ProductionVariants") or []
        if len(variants) != 1:
            raise ValidationError("the local SageMaker hosts exactly one production variant per endpoint")
        self._get("model", variants[0].get("ModelName", ""), "Could not find model")
        async_config = body.get("AsyncInferenceConfig")
        if async_config is not None:
            output = async_config.get("OutputConfig") or {}
            S3Uri.parse(output.get("S3OutputPath", ""))
            if output.get("S3FailurePath"):
                S3Uri.parse(output["S3FailurePath"])
        config = {
            **{k: v for k, v in body.items() if k != "Tags"},
            "EndpointConfigArn": f"{self.arn_prefix}:endpoint-config/{name.lower()}",
            "CreationTime": _now(),
        }
        self.store.put("endpoint-config", name, config)
        return {"EndpointConfigArn": config["EndpointConfigArn"]}

    def describe_endpoint_config(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._get(
            "endpoint-config", required(body, "EndpointConfigName"), "Could not find endpoint configuration"
        )

    def delete_endpoint_config(self, body: dict[str, Any]) -> dict[str, Any]:
        name = required(body, "EndpointConfigName")
        self._get("endpoint-config", name, "Could not find endpoint configuration")
        self.store.delete("endpoint-config", name)
        return {}

    # ---------------------------------------------------------------- endpoints

    def create_endpoint(self, body: dict[str, Any]) -> dict[str, Any]:
        name = required(body, "EndpointName")
        config_name = required(body, "EndpointConfigName")
        self._get("endpoint-config", config_name, "Could not find endpoint configuration")
        with self.store.transaction():
            if self.store.get("endpoint", name):
                raise ValidationError(f'Cannot create already existing endpoint "{self.arn_prefix}:endpoint/{name}".')
            now = _now()
            endpoint = {
                "EndpointName": name,
                "EndpointArn": f"{self.arn_prefix}:endpoint/{name.lower()}",
                "EndpointConfigName": config_name,
                "EndpointStatus": "Creating",
                "CreationTime": now,
                "LastModifiedTime": now,
            }
            self.store.put("endpoint", name, endpoint)
        self._start_in_background(name, config_name)
        return {"EndpointArn": endpoint["EndpointArn"]}

    def update_endpoint(self, body: dict[str, Any]) -> dict[str, Any]:
        name = required(body, "EndpointName")
        config_name = required(body, "EndpointConfigName")
        self._get("endpoint-config", config_name, "Could not find endpoint configuration")
        endpoint = self._endpoint(name)
        if endpoint["EndpointStatus"] not in ("InService", "Failed"):
            raise ValidationError(f"Cannot update in-progress endpoint {endpoint['EndpointArn']}.")
        self._set_endpoint(name, EndpointStatus="Updating")
        self._start_in_background(name, config_name)
        return {"EndpointArn": endpoint["EndpointArn"]}

    def describe_endpoint(self, body: dict[str, Any]) -> dict[str, Any]:
        endpoint = self._endpoint(required(body, "EndpointName"))
        config = self.store.get("endpoint-config", endpoint["EndpointConfigName"]) or {}
        variant = (config.get("ProductionVariants") or [{}])[0]
        result = dict(endpoint)
        result["ProductionVariants"] = [
            {
                "VariantName": variant.get("VariantName", "AllTraffic"),
                "CurrentInstanceCount": variant.get("InitialInstanceCount", 1),
                "DesiredInstanceCount": variant.get("InitialInstanceCount", 1),
                "CurrentWeight": 1.0,
                "DesiredWeight": 1.0,
            }
        ]
        if config.get("AsyncInferenceConfig"):
            result["AsyncInferenceConfig"] = config["AsyncInferenceConfig"]
        return result

    def list_endpoints(self, body: dict[str, Any]) -> dict[str, Any]:
        endpoints = self.store.list("endpoint")
        if body.get("NameContains"):
            endpoints = [e for e in endpoints if body["NameContains"] in e["EndpointName"]]
        keys = ("EndpointName", "EndpointArn", "CreationTime", "LastModifiedTime", "EndpointStatus")
        return {"Endpoints": [{k: e[k] for k in keys if k in e} for e in endpoints]}

    def delete_endpoint(self, body: dict[str, Any]) -> dict[str, Any]:
        name = required(body, "EndpointName")
        self._endpoint(name)
        self._stop_host(name)
        self.store.delete("endpoint", name)
        return {}

    def resume(self) -> list[str]:
        """After a restart: host again every endpoint that was in service or on its way there."""
        # Serving processes of a local SageMaker that was killed would hold their ports forever.
        stop_orphaned_containers(self.state_dir)
        resumed = []
        for endpoint in self.store.list("endpoint"):
            if endpoint["EndpointStatus"] in ("InService", "Creating", "Updating"):
                self._start_in_background(endpoint["EndpointName"], endpoint["EndpointConfigName"])
                resumed.append(endpoint["EndpointName"])
        return resumed

    def shutdown(self) -> None:
        for name in list(self._hosts):
            self._stop_host(name)

    def _get(self, kind: str, name: str, message: str) -> dict[str, Any]:
        document = self.store.get(kind, name)
        if document is None:
            raise ValidationError(f'{message} "{self.arn_prefix}:{kind}/{name.lower()}".')
        return document

    def _endpoint(self, name: str) -> dict[str, Any]:
        return self._get("endpoint", name, "Could not find endpoint")

    def _set_endpoint(self, name: str, **changes: Any) -> None:
        with self.store.transaction():
            endpoint = self.store.get("endpoint", name)
            if endpoint is None:
                return
            endpoint.update(changes, LastModifiedTime=_now())
            if changes.get("EndpointStatus") != "Failed":
                endpoint.pop("FailureReason", None)
            self.store.put("endpoint", name, endpoint)

    # ---------------------------------------------------------------- hosting

    def _start_in_background(self, name: str, config_name: str) -> None:
        thread = threading.Thread(target=self._start, args=(name, config_name), name=f"host-{name}", daemon=True)
        thread.start()

    def _start(self, name: str, config_name: str) -> None:
        try:
            host = self._launch(name, config_name)
        except Exception as error:
            log.exception("endpoint %s failed to start", name)
            self._set_endpoint(name, EndpointStatus="Failed", FailureReason=str(error)[:1024])
            return
        with self._lock:
            previous = self._hosts.get(name)
            self._hosts[name] = host
        if previous is not None:
            self._retire(previous, host)
        self._set_endpoint(name, EndpointStatus="InService", EndpointConfigName=config_name)
        for invocation in self.store.list("invocation", parent=name):
            if invocation["Status"] in ("Queued", "InProgress"):
                host.invocations.put(invocation["InferenceId"])

    def _launch(self, name: str, config_name: str) -> Host:
        config = self._get("endpoint-config", config_name, "Could not find endpoint configuration")
        variant = config["ProductionVariants"][0]
        model = self._get("model", variant["ModelName"], "Could not find model")
        container = model["PrimaryContainer"]
        generation = uuid.uuid4().hex[:8]
        root = self.state_dir / "endpoints" / name / generation
        model_dir = root / "opt/ml/model"
        model_dir.mkdir(parents=True)
        source = S3Uri.parse(container["ModelDataUrl"])
        archive = root / "model.tar.gz"
        self._s3().download_file(source.bucket, source.key, str(archive))
        extract_tar(archive, model_dir)
        archive.unlink()
        port = free_port()
        # SageMaker serves on 8080; instances here share the host's network, so each gets its own port.
        environment = {
            **aws_environment(model.get("ExecutionRoleArn")),
            **{k: str(v) for k, v in (container.get("Environment") or {}).items()},
            "SAGEMAKER_BIND_TO_PORT": str(port),
            "FHE_BIND_HOST": "127.0.0.1",
        }
        serving = Container(container_name(name, generation), container["Image"], ["serve"], root, environment)
        command, process_environment = self.runtime.command(serving)
        log_file = (root / "container.log").open("ab")
        process = subprocess.Popen(
            command, cwd=root, env=process_environment, stdout=log_file, stderr=subprocess.STDOUT
        )
        log_file.close()
        (root / CONTAINER_FILE).write_text(json.dumps({"runtime": self.runtime.name, "name": serving.name}))
        (root / PID_FILE).write_text(str(process.pid))
        host = Host(name, generation, process, port, root, config)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if process.poll() is not None:
                tail = (root / "container.log").read_text(errors="replace").strip().splitlines()[-5:]
                raise RuntimeError(f"the serving container exited with {process.returncode}: " + " | ".join(tail))
            try:
                with urllib.request.urlopen(host.url + "/ping", timeout=2) as response:  # noqa: S310 - loopback
                    if response.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        else:
            process.kill()
            self.runtime.remove(serving.name)
            raise RuntimeError(f"the serving container did not answer /ping within {START_TIMEOUT_S:.0f} s")
        async_config = config.get("AsyncInferenceConfig") or {}
        concurrency = int(
            (async_config.get("ClientConfig") or {}).get("MaxConcurrentInvocationsPerInstance", DEFAULT_CONCURRENCY)
        ) * int(variant.get("InitialInstanceCount", 1))
        for number in range(max(1, concurrency)):
            worker = threading.Thread(target=self._work, args=(host,), name=f"invoke-{name}-{number}", daemon=True)
            worker.start()
            host.workers.append(worker)
        log.info("endpoint %s in service on port %d (%d workers)", name, port, concurrency)
        return host

    def _retire(self, old: Host, new: Host) -> None:
        old.stopping.set()
        # Queued work moves to the new host; work in flight finishes on the old one.
        while True:
            try:
                new.invocations.put(old.invocations.get_nowait())
            except queue.Empty:
                break
        for _ in old.workers:
            old.invocations.put("")
        for worker in old.workers:
            worker.join(timeout=DEFAULT_INVOCATION_TIMEOUT_S)
        self._terminate(old)

    def _stop_host(self, name: str) -> None:
        with self._lock:
            host = self._hosts.pop(name, None)
        if host is None:
            return
        host.stopping.set()
        for _ in host.workers:
            host.invocations.put("")
        self._terminate(host)

    def _terminate(self, host: Host) -> None:
        host.process.terminate()
        try:
            host.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            host.process.kill()
            host.process.wait()
        self.runtime.remove(host.container_name)
        shutil.rmtree(host.root / "opt/ml/model", ignore_errors=True)
        (host.root / PID_FILE).unlink(missing_ok=True)

    # ---------------------------------------------------------------- InvokeEndpointAsync

    def invoke_endpoint_async(self, name: str, headers: dict[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
        endpoint = self.store.get("endpoint", name)
        if endpoint is None:
            raise ValidationError(f"Endpoint {name} of account {self.arn_prefix.rsplit(':', 1)[-1]} not found.")
        if endpoint["EndpointStatus"] not in ("InService", "Updating"):
            raise ValidationError(f"Endpoint {name} is not in service (status {endpoint['EndpointStatus']}).")
        config = self.store.get("endpoint-config", endpoint["EndpointConfigName"]) or {}
        async_config = config.get("AsyncInferenceConfig")
        if not async_config:
            raise ValidationError(f"Endpoint {name} is not an asynchronous endpoint.")
        input_location = headers.get("x-amzn-sagemaker-inputlocation", "")
        if not input_location:
            raise ValidationError("InputLocation is required")
        try:
            S3Uri.parse(input_location)
        except ValueError as error:
            raise ValidationError(f"InputLocation: {error}") from None
        inference_id = headers.get("x-amzn-sagemaker-inference-id") or str(uuid.uuid4())
        output = async_config["OutputConfig"]
        output_uri = S3Uri.parse(output["S3OutputPath"]).join(f"{inference_id}.out")
        failure_uri = (
            S3Uri.parse(output["S3FailurePath"]).join(f"{inference_id}-error.out")
            if output.get("S3FailurePath")
            else None
        )
        with self.store.transaction():
            if self.store.get("invocation", inference_id):
                raise ResourceInUse(f"InferenceId {inference_id} was already used")
            now = _now()
            ttl = int(headers.get("x-amzn-sagemaker-requestttlseconds") or 6 * 3600)
            timeout = int(headers.get("x-amzn-sagemaker-invocationtimeoutseconds") or DEFAULT_INVOCATION_TIMEOUT_S)
            invocation = {
                "InferenceId": inference_id,
                "EndpointName": name,
                "InputLocation": input_location,
                "ContentType": headers.get("x-amzn-sagemaker-content-type", "application/octet-stream"),
                "Accept": headers.get("x-amzn-sagemaker-accept", ""),
                "CustomAttributes": headers.get("x-amzn-sagemaker-custom-attributes", ""),
                "OutputLocation": str(output_uri),
                "FailureLocation": str(failure_uri) if failure_uri else "",
                "ReceivedTime": now,
                "ExpiresAt": now + ttl,
                "TimeoutSeconds": timeout,
                "Status": "Queued",
            }
            self.store.put("invocation", inference_id, invocation, parent=name)
        with self._lock:
            host = self._hosts.get(name)
        if host is not None:
            host.invocations.put(inference_id)
        response_headers = {"X-Amzn-SageMaker-OutputLocation": str(output_uri)}
        if failure_uri:
            response_headers["X-Amzn-SageMaker-FailureLocation"] = str(failure_uri)
        return {"InferenceId": inference_id}, response_headers

    def _work(self, host: Host) -> None:
        while not host.stopping.is_set():
            inference_id = host.invocations.get()
            if not inference_id:
                return
            invocation = self.store.get("invocation", inference_id)
            if invocation is None or invocation["Status"] not in ("Queued", "InProgress"):
                continue
            try:
                self._invoke(host, invocation)
            except Exception:
                log.exception("invocation %s could not be completed", inference_id)

    def _invoke(self, host: Host, invocation: dict[str, Any]) -> None:
        inference_id = invocation["InferenceId"]
        invocation["Status"] = "InProgress"
        self.store.put("invocation", inference_id, invocation, parent=host.endpoint)
        if _now() > invocation["ExpiresAt"]:
            self._finish(host, invocation, None, "Request expired before it was processed (RequestTTLSeconds)", b"")
            return
        try:
            source = S3Uri.parse(invocation["InputLocation"])
            payload = self._s3().get_object(Bucket=source.bucket, Key=source.key)["Body"].read()
        except Exception as error:
            reason = f"ClientError: Failed to download data. {type(error).__name__}: {error}"
            self._finish(host, invocation, None, reason, b"")
            return
        if self._inject_fault(host.endpoint, invocation["InputLocation"]):
            self._finish(host, invocation, None, "ServerError: the instance failed (injected fault)", b"")
            return
        request = urllib.request.Request(  # noqa: S310 - loopback
            host.url + "/invocations",
            data=payload,
            method="POST",
            headers={
                "Content-Type": invocation["ContentType"],
                "Accept": invocation["Accept"] or "*/*",
                "X-Amzn-SageMaker-Custom-Attributes": invocation["CustomAttributes"],
                "X-Amzn-SageMaker-Inference-Id": inference_id,
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=invocation["TimeoutSeconds"]) as response:  # noqa: S310
                body = response.read()
                content_type = response.headers.get("Content-Type", "application/octet-stream")
            self._finish(host, invocation, (body, content_type), None, b"")
        except urllib.error.HTTPError as error:
            body = error.read()
            reason = (
                f"ClientError: Received server error ({error.code}) from primary with message "
                f'"{body[:512].decode(errors="replace")}".'
            )
            self._finish(host, invocation, None, reason, body)
        except (urllib.error.URLError, OSError) as error:
            reason = f"ServerError: the model container did not answer ({error})"
            self._finish(host, invocation, None, reason, b"")
            if host.process.poll() is not None and not host.stopping.is_set():
                log.error("the serving container of %s exited; restarting it", host.endpoint)
                self._start_in_background(host.endpoint, self._endpoint(host.endpoint)["EndpointConfigName"])

    def _inject_fault(self, endpoint: str, input_location: str) -> bool:
        try:
            rules = json.loads((self.state_dir / FAULTS_FILE).read_text()).get(endpoint) or []
        except FileNotFoundError:
            return False
        rule = next((r for r in rules if r.get("input_contains", "") in input_location), None)
        if rule is None:
            return False
        time.sleep(float(rule.get("delay_seconds", 0)))
        with self._lock:
            attempt = self._attempts.get(input_location, 0) + 1
            self._attempts[input_location] = attempt
        return attempt <= int(rule.get("fail_first", 0))

    def _finish(
        self,
        host: Host,
        invocation: dict[str, Any],
        success: tuple[bytes, str] | None,
        failure_reason: str | None,
        failure_body: bytes,
    ) -> None:
        s3 = self._s3()
        config = host.config["AsyncInferenceConfig"]["OutputConfig"]
        notification = config.get("NotificationConfig") or {}
        message: dict[str, Any] = {
            "awsRegion": self.region,
            "eventTime": _iso(_now()),
            "receivedTime": _iso(invocation["ReceivedTime"]),
            "invocationStatus": "Completed" if success else "Failed",
            "requestParameters": {
                "contentType": invocation["ContentType"],
                "endpointName": invocation["EndpointName"],
                "inputLocation": invocation["InputLocation"],
            },
            "inferenceId": invocation["InferenceId"],
            "eventVersion": "1.0",
            "eventSource": "aws:sagemaker",
            "eventName": "InferenceResult",
        }
        if invocation["CustomAttributes"]:
            message["requestParameters"]["customAttributes"] = invocation["CustomAttributes"]
        if success:
            body, content_type = success
            target = S3Uri.parse(invocation["OutputLocation"])
            s3.put_object(Bucket=target.bucket, Key=target.key, Body=body, ContentType=content_type)
            message["responseParameters"] = {"contentType": content_type, "outputLocation": str(target)}
            include = "SUCCESS_NOTIFICATION_TOPIC" in (notification.get("IncludeInferenceResponseIn") or [])
            if include and len(body) <= 128 * 1024:
                message["responseBody"] = {"content": body.decode(errors="replace"), "contentType": content_type}
            topic = notification.get("SuccessTopic")
            invocation["Status"] = "Completed"
        else:
            message["failureReason"] = failure_reason
            if invocation["FailureLocation"]:
                target = S3Uri.parse(invocation["FailureLocation"])
                s3.put_object(
                    Bucket=target.bucket, Key=target.key, Body=failure_body or (failure_reason or "").encode()
                )
                message["responseParameters"] = {"contentType": "application/json", "failureLocation": str(target)}
            topic = notification.get("ErrorTopic")
            invocation["Status"] = "Failed"
            invocation["FailureReason"] = failure_reason
        invocation["CompletedTime"] = _now()
        if topic:
            self._sns().publish(TopicArn=topic, Message=json.dumps(message))
        self.store.put("invocation", invocation["InferenceId"], invocation, parent=host.endpoint)
        log.info("invocation %s on %s: %s", invocation["InferenceId"], host.endpoint, invocation["Status"])


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
