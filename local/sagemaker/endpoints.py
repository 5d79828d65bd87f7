"""Models, endpoint configurations and asynchronous endpoints: the SageMaker API over the store, and each
endpoint's life (hosted, updated to a new configuration with its queue carried over, restarted, stopped).
Hosting the serving container lives in ``hosting``, the invocation queue in ``invocations``."""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any

from common.s3uri import S3Uri
from local.sagemaker.backend import Backend, timestamp
from local.sagemaker.errors import ValidationError, required
from local.sagemaker.hosting import Host, launch, stop_orphaned_containers, terminate
from local.sagemaker.invocations import DEFAULT_INVOCATION_TIMEOUT_S, Invocations

log = logging.getLogger("local.sagemaker.endpoints")


class Endpoints:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._hosts: dict[str, Host] = {}
        self._lock = threading.RLock()
        self.invocations = Invocations(backend, restart=lambda endpoint: self._restart(endpoint))

    # ---------------------------------------------------------------- models and endpoint configurations

    def create_model(self, body: dict[str, Any]) -> dict[str, Any]:
        name = required(body, "ModelName")
        if self.backend.store.get("model", name):
            raise ValidationError(
                f'Cannot create already existing model "{self.backend.arn_prefix}:model/{name.lower()}".'
            )
        container = body.get("PrimaryContainer") or (body.get("Containers") or [None])[0]
        if not isinstance(container, dict):
            raise ValidationError("PrimaryContainer is required")
        if container.get("ModelPackageName"):
            package = self.backend.registry.describe_model_package({"ModelPackageName": container["ModelPackageName"]})
            spec = package["InferenceSpecification"]["Containers"][0]
            container = {**spec, **{k: v for k, v in container.items() if k != "ModelPackageName"}}
            container["ModelPackageName"] = package["ModelPackageArn"]
        if not container.get("Image") or not container.get("ModelDataUrl"):
            raise ValidationError("the model's container needs an Image and a ModelDataUrl")
        model = {
            "ModelName": name,
            "ModelArn": f"{self.backend.arn_prefix}:model/{name.lower()}",
            "PrimaryContainer": container,
            "ExecutionRoleArn": body.get("ExecutionRoleArn", ""),
            "CreationTime": timestamp(),
        }
        self.backend.store.put("model", name, model)
        return {"ModelArn": model["ModelArn"]}

    def describe_model(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._get("model", required(body, "ModelName"), "Could not find model")

    def delete_model(self, body: dict[str, Any]) -> dict[str, Any]:
        name = required(body, "ModelName")
        self._get("model", name, "Could not find model")
        self.backend.store.delete("model", name)
        return {}

    def create_endpoint_config(self, body: dict[str, Any]) -> dict[str, Any]:
        name = required(body, "EndpointConfigName")
        if self.backend.store.get("endpoint-config", name):
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
            "EndpointConfigArn": f"{self.backend.arn_prefix}:endpoint-config/{name.lower()}",
            "CreationTime": timestamp(),
        }
        self.backend.store.put("endpoint-config", name, config)
        return {"EndpointConfigArn": config["EndpointConfigArn"]}

    def describe_endpoint_config(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._get(
            "endpoint-config", required(body, "EndpointConfigName"), "Could not find endpoint configuration"
        )

    def delete_endpoint_config(self, body: dict[str, Any]) -> dict[str, Any]:
        name = required(body, "EndpointConfigName")
        self._get("endpoint-config", name, "Could not find endpoint configuration")
        self.backend.store.delete("endpoint-config", name)
        return {}

    # ---------------------------------------------------------------- endpoints

    def create_endpoint(self, body: dict[str, Any]) -> dict[str, Any]:
        name = required(body, "EndpointName")
        config_name = required(body, "EndpointConfigName")
        self._get("endpoint-config", config_name, "Could not find endpoint configuration")
        with self.backend.store.transaction():
            if self.backend.store.get("endpoint", name):
                raise ValidationError(
                    f'Cannot create already existing endpoint "{self.backend.arn_prefix}:endpoint/{name}".'
                )
            now = timestamp()
            endpoint = {
                "EndpointName": name,
                "EndpointArn": f"{self.backend.arn_prefix}:endpoint/{name.lower()}",
                "EndpointConfigName": config_name,
                "EndpointStatus": "Creating",
                "CreationTime": now,
                "LastModifiedTime": now,
            }
            self.backend.store.put("endpoint", name, endpoint)
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
        config = self.backend.store.get("endpoint-config", endpoint["EndpointConfigName"]) or {}
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
        endpoints = self.backend.store.list("endpoint")
        if body.get("NameContains"):
            endpoints = [e for e in endpoints if body["NameContains"] in e["EndpointName"]]
        keys = ("EndpointName", "EndpointArn", "CreationTime", "LastModifiedTime", "EndpointStatus")
        return {"Endpoints": [{k: e[k] for k in keys if k in e} for e in endpoints]}

    def delete_endpoint(self, body: dict[str, Any]) -> dict[str, Any]:
        name = required(body, "EndpointName")
        self._endpoint(name)
        self._stop_host(name)
        self.backend.store.delete("endpoint", name)
        return {}

    def resume(self) -> list[str]:
        """After a restart: host again every endpoint that was in service or on its way there."""
        # Serving processes of a local SageMaker that was killed would hold their ports forever.
        stop_orphaned_containers(self.backend.state_dir)
        resumed = []
        for endpoint in self.backend.store.list("endpoint"):
            if endpoint["EndpointStatus"] in ("InService", "Creating", "Updating"):
                self._start_in_background(endpoint["EndpointName"], endpoint["EndpointConfigName"])
                resumed.append(endpoint["EndpointName"])
        return resumed

    def shutdown(self) -> None:
        for name in list(self._hosts):
            self._stop_host(name)

    def _get(self, kind: str, name: str, message: str) -> dict[str, Any]:
        document = self.backend.store.get(kind, name)
        if document is None:
            raise ValidationError(f'{message} "{self.backend.arn_prefix}:{kind}/{name.lower()}".')
        return document

    def _endpoint(self, name: str) -> dict[str, Any]:
        return self._get("endpoint", name, "Could not find endpoint")

    def _set_endpoint(self, name: str, **changes: Any) -> None:
        with self.backend.store.transaction():
            endpoint = self.backend.store.get("endpoint", name)
            if endpoint is None:
                return
            endpoint.update(changes, LastModifiedTime=timestamp())
            if changes.get("EndpointStatus") != "Failed":
                endpoint.pop("FailureReason", None)
            self.backend.store.put("endpoint", name, endpoint)

    # ---------------------------------------------------------------- hosting

    def _start_in_background(self, name: str, config_name: str) -> None:
        thread = threading.Thread(target=self._start, args=(name, config_name), name=f"host-{name}", daemon=True)
        thread.start()

    def _restart(self, name: str) -> None:
        self._start_in_background(name, self._endpoint(name)["EndpointConfigName"])

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
        self.invocations.requeue(host)

    def _launch(self, name: str, config_name: str) -> Host:
        config = self._get("endpoint-config", config_name, "Could not find endpoint configuration")
        model = self._get("model", config["ProductionVariants"][0]["ModelName"], "Could not find model")
        host = launch(self.backend.runtime, self.backend.state_dir, self.backend.s3(), name, config, model)
        workers = self.invocations.start_workers(host)
        log.info("endpoint %s in service on port %d (%d workers)", name, host.port, workers)
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
        terminate(self.backend.runtime, old)

    def _stop_host(self, name: str) -> None:
        with self._lock:
            host = self._hosts.pop(name, None)
        if host is None:
            return
        host.stopping.set()
        for _ in host.workers:
            host.invocations.put("")
        terminate(self.backend.runtime, host)

    def invoke_endpoint_async(self, name: str, headers: dict[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
        with self._lock:
            host = self._hosts.get(name)
        return self.invocations.accept(name, headers, host)
