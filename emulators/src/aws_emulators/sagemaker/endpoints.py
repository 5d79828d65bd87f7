"""Models, endpoint configurations and asynchronous endpoints: the SageMaker API over the store, and each
endpoint's life: its instances (serving containers) started, scaled with its backlog by the Application Auto
Scaling policies registered for it (``autoscaling``), replaced when one dies, moved to a new configuration with
the queue carried over, stopped. An endpoint at zero instances is InService, as on AWS: its requests wait in the
queue until the scaling round starts an instance.
Hosting one serving container lives in ``hosting``, the invocation queue in ``invocations``."""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass, field
from typing import Any

from aws_emulators.sagemaker.autoscaling import (
    BACKLOG_METRIC,
    NO_CAPACITY_METRIC,
    Autoscaling,
    ScalingState,
    decide,
    resource_id,
)
from aws_emulators.sagemaker.backend import Backend, timestamp
from aws_emulators.sagemaker.errors import ValidationError, required
from aws_emulators.sagemaker.hosting import Host, launch, stop_orphaned_containers, terminate
from aws_emulators.sagemaker.invocations import DEFAULT_INVOCATION_TIMEOUT_S, Invocations
from aws_emulators.sagemaker.s3_objects import S3Uri, S3UriError

log = logging.getLogger("aws_emulators.sagemaker.endpoints")

METRICS_PERIOD_S = 10.0  # how often the backlog metrics go to CloudWatch
METRICS_NAMESPACE = "AWS/SageMaker"


@dataclass
class Fleet:
    """An endpoint's instances, the queue they share, and its scaling."""

    endpoint: str
    config_name: str
    scaling: ScalingState
    waiting: queue.Queue[str] = field(default_factory=queue.Queue)
    hosts: list[Host] = field(default_factory=list)
    starting: int = 0
    updating: bool = False
    metrics_at: float = 0.0


class Endpoints:
    def __init__(self, backend: Backend, autoscaling: Autoscaling) -> None:
        self.backend = backend
        self.autoscaling = autoscaling
        self._fleets: dict[str, Fleet] = {}
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self.invocations = Invocations(backend, lost=self._lost)
        self._scaler = threading.Thread(target=self._scale_forever, name="endpoint-scaling", daemon=True)
        self._scaler.start()

    # ---------------------------------------------------------------- models and endpoint configurations

    def create_model(self, body: dict[str, Any]) -> dict[str, Any]:
        name = required(body, "ModelName")
        if self.backend.store.get("model", name):
            raise ValidationError(
                f'Cannot create already existing model "{self.backend.arn_prefix}:model/{name.lower()}".'
            )
        # SageMaker reads the model and serves it only under the model's own role: without one it refuses the model,
        # and nothing here may stand in for it (this server's own credentials are the administrator's).
        role = required(body, "ExecutionRoleArn")
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
            "ExecutionRoleArn": role,
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
            try:
                S3Uri.parse(output.get("S3OutputPath", ""))
                if output.get("S3FailurePath"):
                    S3Uri.parse(output["S3FailurePath"])
            except S3UriError as error:
                raise ValidationError(f"AsyncInferenceConfig.OutputConfig: {error}") from None
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
        config = self._get("endpoint-config", config_name, "Could not find endpoint configuration")
        with self.backend.store.transaction():
            if self.backend.store.get("endpoint", name):
                raise ValidationError(
                    f'Cannot create already existing endpoint "{self.backend.arn_prefix}:endpoint/{name}".'
                )
            now = timestamp()
            endpoint: dict[str, Any] = {
                "EndpointName": name,
                "EndpointArn": f"{self.backend.arn_prefix}:endpoint/{name.lower()}",
                "EndpointConfigName": config_name,
                "EndpointStatus": "Creating",
                "DesiredInstanceCount": _initial_count(config),
                "CreationTime": now,
                "LastModifiedTime": now,
            }
            self.backend.store.put("endpoint", name, endpoint)
        fleet = Fleet(name, config_name, ScalingState(endpoint["DesiredInstanceCount"], last_needed=now))
        with self._lock:
            self._fleets[name] = fleet
        self._in_background(self._move_to, fleet, config_name, max(1, fleet.scaling.desired))
        return {"EndpointArn": endpoint["EndpointArn"]}

    def update_endpoint(self, body: dict[str, Any]) -> dict[str, Any]:
        name = required(body, "EndpointName")
        config_name = required(body, "EndpointConfigName")
        self._get("endpoint-config", config_name, "Could not find endpoint configuration")
        endpoint = self._endpoint(name)
        if endpoint["EndpointStatus"] not in ("InService", "Failed"):
            raise ValidationError(f"Cannot update in-progress endpoint {endpoint['EndpointArn']}.")
        self._set_endpoint(name, EndpointStatus="Updating")
        fleet = self._fleet(name)
        self._in_background(self._move_to, fleet, config_name, max(1, fleet.scaling.desired))
        return {"EndpointArn": endpoint["EndpointArn"]}

    def describe_endpoint(self, body: dict[str, Any]) -> dict[str, Any]:
        endpoint = self._endpoint(required(body, "EndpointName"))
        config = self.backend.store.get("endpoint-config", endpoint["EndpointConfigName"]) or {}
        variant = (config.get("ProductionVariants") or [{}])[0]
        with self._lock:
            fleet = self._fleets.get(endpoint["EndpointName"])
            current = len(fleet.hosts) if fleet else 0
            desired = fleet.scaling.desired if fleet else endpoint.get("DesiredInstanceCount", 0)
        result = {k: v for k, v in endpoint.items() if k != "DesiredInstanceCount"}
        result["ProductionVariants"] = [
            {
                "VariantName": variant.get("VariantName", "AllTraffic"),
                "CurrentInstanceCount": current,
                "DesiredInstanceCount": desired,
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
        with self._lock:
            fleet = self._fleets.pop(name, None)
        if fleet is not None:
            for host in list(fleet.hosts):
                self._stop_instance(fleet, host, wait=False)
        self.backend.store.delete("endpoint", name)
        return {}

    def resume(self) -> list[str]:
        """After a restart: every endpoint that was in service or on its way there gets its instances again, and
        its unanswered requests go back on its queue."""
        # Serving processes of a local SageMaker that was killed would hold their ports forever.
        stop_orphaned_containers(self.backend.state_dir)
        resumed = []
        for endpoint in self.backend.store.list("endpoint"):
            if endpoint["EndpointStatus"] not in ("InService", "Creating", "Updating"):
                continue
            name, config_name = endpoint["EndpointName"], endpoint["EndpointConfigName"]
            desired = int(endpoint.get("DesiredInstanceCount", 1))
            fleet = Fleet(name, config_name, ScalingState(desired, last_needed=timestamp()))
            with self._lock:
                self._fleets[name] = fleet
            self.invocations.requeue(name, fleet.waiting)
            if endpoint["EndpointStatus"] == "InService" and desired == 0:
                pass  # scaled to zero: the scaling round starts an instance when a request waits
            else:
                self._in_background(self._move_to, fleet, config_name, max(1, desired))
            resumed.append(name)
        return resumed

    def shutdown(self) -> None:
        self._stop.set()
        with self._lock:
            fleets = list(self._fleets.values())
        for fleet in fleets:
            for host in list(fleet.hosts):
                self._stop_instance(fleet, host, wait=False)

    def invoke_endpoint_async(self, name: str, headers: dict[str, str]) -> dict[str, Any]:
        """Queue a request; the answer's ``Body`` and ``Headers``, as the REST protocol carries them."""
        with self._lock:
            fleet = self._fleets.get(name)
        body, response_headers = self.invocations.accept(name, headers, fleet.waiting if fleet else None)
        return {"Body": body, "Headers": response_headers}

    def _get(self, kind: str, name: str, message: str) -> dict[str, Any]:
        document = self.backend.store.get(kind, name)
        if document is None:
            raise ValidationError(f'{message} "{self.backend.arn_prefix}:{kind}/{name.lower()}".')
        return document

    def _endpoint(self, name: str) -> dict[str, Any]:
        return self._get("endpoint", name, "Could not find endpoint")

    def _fleet(self, name: str) -> Fleet:
        with self._lock:
            fleet = self._fleets.get(name)
        if fleet is None:
            raise ValidationError(f"Endpoint {name} has no instances hosted here; create it again.")
        return fleet

    def _set_endpoint(self, name: str, **changes: Any) -> None:
        with self.backend.store.transaction():
            endpoint = self.backend.store.get("endpoint", name)
            if endpoint is None:
                return
            endpoint.update(changes, LastModifiedTime=timestamp())
            if changes.get("EndpointStatus") != "Failed":
                endpoint.pop("FailureReason", None)
            self.backend.store.put("endpoint", name, endpoint)

    # ---------------------------------------------------------------- instances

    @staticmethod
    def _in_background(target: Any, *args: Any) -> None:
        threading.Thread(target=target, args=args, name=f"host-{args[0].endpoint}", daemon=True).start()

    def _move_to(self, fleet: Fleet, config_name: str, count: int) -> None:
        """Start ``count`` instances of ``config_name`` (creation, update, resume); once they serve, the
        endpoint's older instances stop (their requests in flight finish first) and it is InService."""
        fleet.updating = True
        started: list[Host] = []
        try:
            for _ in range(count):
                started.append(self._launch(fleet, config_name))
        except Exception as error:
            log.exception("endpoint %s failed to start", fleet.endpoint)
            for host in started:
                self._stop_instance(fleet, host, wait=False)
            self._set_endpoint(fleet.endpoint, EndpointStatus="Failed", FailureReason=str(error)[:1024])
            fleet.updating = False
            return
        with self._lock:
            old, fleet.hosts, fleet.config_name = fleet.hosts, started, config_name
        for host in old:
            self._stop_instance(fleet, host, wait=True)
        self._set_endpoint(fleet.endpoint, EndpointStatus="InService", EndpointConfigName=config_name)
        fleet.updating = False

    def _launch(self, fleet: Fleet, config_name: str) -> Host:
        config = self._get("endpoint-config", config_name, "Could not find endpoint configuration")
        model = self._get("model", config["ProductionVariants"][0]["ModelName"], "Could not find model")
        host = launch(self.backend, fleet.endpoint, config, model)
        workers = self.invocations.start_workers(host, fleet.waiting)
        log.info("endpoint %s: an instance serves on port %d (%d workers)", fleet.endpoint, host.port, workers)
        return host

    def _add_instance(self, fleet: Fleet) -> None:
        try:
            host = self._launch(fleet, fleet.config_name)
        except Exception:
            log.exception("endpoint %s: an instance failed to start", fleet.endpoint)
            return
        finally:
            with self._lock:
                fleet.starting -= 1
        with self._lock:
            if self._fleets.get(fleet.endpoint) is fleet:
                fleet.hosts.append(host)
                return
        self._stop_instance(fleet, host, wait=False)  # the endpoint went while it started

    def _stop_instance(self, fleet: Fleet, host: Host, *, wait: bool) -> None:
        """Stop taking requests on ``host``; with ``wait``, let the ones in flight finish; then stop it."""
        with self._lock:
            if host in fleet.hosts:
                fleet.hosts.remove(host)
        host.stopping.set()
        if wait:
            for worker in host.workers:
                worker.join(timeout=DEFAULT_INVOCATION_TIMEOUT_S)
        terminate(self.backend.runtime, host)
        log.info("endpoint %s: instance %s stopped", fleet.endpoint, host.generation)

    def _lost(self, host: Host) -> None:
        """A dead serving container: the instance goes, and the next scaling round starts its replacement."""
        with self._lock:
            fleet = self._fleets.get(host.endpoint)
        if fleet is not None:
            self._in_background(lambda f, h: self._stop_instance(f, h, wait=False), fleet, host)

    # ---------------------------------------------------------------- scaling

    def _scale_forever(self) -> None:
        while not self._stop.wait(self.backend.configuration.scaling_period_s):
            with self._lock:
                fleets = list(self._fleets.values())
            for fleet in fleets:
                try:
                    self.scale(fleet)
                except Exception:
                    log.exception("scaling round of %s failed", fleet.endpoint)

    def scale(self, fleet: Fleet) -> None:
        """One scaling round: the backlog measured, the policies applied, instances started or stopped."""
        if fleet.updating:
            return
        now, backlog = timestamp(), self.invocations.backlog(fleet.endpoint)
        with self._lock:
            running, starting = len(fleet.hosts), fleet.starting
        target = self.autoscaling.target(fleet.endpoint)
        if target is not None:
            policies = self.autoscaling.policies(resource_id(fleet.endpoint))
            wired = self._wired_step_policies(fleet.endpoint) if fleet.scaling.desired == 0 and backlog else set()
            before = fleet.scaling.desired
            after, cause = decide(fleet.scaling, target, policies, wired, backlog, now)
            if after != before:
                if after > before:
                    fleet.scaling.last_scale_out = now
                fleet.scaling.desired = after
                self.autoscaling.record(fleet.endpoint, before, after, cause)
                self._set_endpoint(fleet.endpoint, DesiredInstanceCount=after)
                log.info("endpoint %s: desired instances %d → %d (%s)", fleet.endpoint, before, after, cause)
        desired = fleet.scaling.desired
        if running + starting < desired:
            with self._lock:
                fleet.starting += desired - running - starting
            for _ in range(desired - running - starting):
                self._in_background(self._add_instance, fleet)
        elif running > desired and not starting:
            with self._lock:
                idle_first = sorted(fleet.hosts, key=lambda h: h.busy)
            for host in idle_first[: running - desired]:
                self._in_background(lambda f, h: self._stop_instance(f, h, wait=True), fleet, host)
        if now - fleet.metrics_at >= METRICS_PERIOD_S:
            fleet.metrics_at = now
            self._publish_metrics(fleet.endpoint, backlog, running)

    def _wired_step_policies(self, endpoint: str) -> set[str]:
        """The actions of the CloudWatch alarms on the endpoint's HasBacklogWithoutCapacity."""
        try:
            alarms = self.backend.aws.client("cloudwatch").describe_alarms_for_metric(
                MetricName=NO_CAPACITY_METRIC,
                Namespace=METRICS_NAMESPACE,
                Dimensions=[{"Name": "EndpointName", "Value": endpoint}],
            )["MetricAlarms"]
        except Exception as error:
            log.warning("the alarms of %s could not be read: %s", endpoint, error)
            return set()
        dimension = {"Name": "EndpointName", "Value": endpoint}
        return {action for a in alarms if dimension in a.get("Dimensions", []) for action in a.get("AlarmActions", [])}

    def _publish_metrics(self, endpoint: str, backlog: int, instances: int) -> None:
        dimensions = [{"Name": "EndpointName", "Value": endpoint}]
        data = [
            ("ApproximateBacklogSize", float(backlog)),
            (BACKLOG_METRIC, backlog / instances if instances else float(backlog)),
            (NO_CAPACITY_METRIC, 1.0 if backlog and not instances else 0.0),
        ]
        try:
            self.backend.aws.client("cloudwatch").put_metric_data(
                Namespace=METRICS_NAMESPACE,
                MetricData=[{"MetricName": n, "Dimensions": dimensions, "Value": v, "Unit": "Count"} for n, v in data],
            )
        except Exception as error:
            log.warning("the metrics of %s could not be published: %s", endpoint, error)


def _initial_count(config: dict[str, Any]) -> int:
    return int(config["ProductionVariants"][0].get("InitialInstanceCount", 1))
