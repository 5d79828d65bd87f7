"""What a bundle will take and cost, before its owner pays for the encrypted compute.

The inputs are measured or configured, never guessed here:
- the model's costs per sample, measured by the Evaluate step in real FHE (``costs.json`` next to the client
  artifacts: seconds per sample as the endpoint evaluates a shard, with one thread per core; ciphertext bytes per
  sample; evaluation key bytes);
- the endpoint's scaling limits as deployed (instance type, instances at most, shards an instance takes at once,
  the scale-in cooldown during which an idle instance is still paid for, and whether an instance is up now);
- an estimate table (``estimates.json``, shipped with the product and overridable through ``FHE_ESTIMATE_TABLE``):
  the instances' hourly prices, the date they are from, and the workflow's own time per bundle, per wave of shards
  and to start an instance from zero.

The time is the workflow's fixed time and its time per round of shards (as many shards at once as the busy
instances take), plus an instance start when none is up, plus the FHE time: the samples at the measured pace,
shared by the busy instances (FHE is CPU-bound and the endpoint already uses every core of an instance for one
shard, so shards side by side on one instance share its cores). The busy instances are those up now; more are
counted only when the work outlasts an instance start, and they share it only once started. The cost is the busy
instances' time, start and scale-in cooldown included, at the table's price.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

TABLE_VARIABLE = "FHE_ESTIMATE_TABLE"
SHIPPED_TABLE = Path(__file__).with_name("estimates.json")
SCALING_NAMESPACE = "sagemaker"


ENCLAVE_TIMES = ("seconds_per_wave", "instance_start_seconds", "scale_in_seconds")


class EstimateError(ValueError):
    """An estimate that cannot be made: a missing measurement, a table that does not parse, an unknown price."""


@dataclass(frozen=True)
class EstimateTable:
    as_of: str  # the date the prices are from
    source: str
    currency: str
    hourly_prices: dict[str, float]
    seconds_per_bundle: float
    seconds_per_wave: float
    instance_start_seconds: float
    path: str
    # The enclave fleet's own times (the table's "enclave" section); None in a table without one.
    enclave: dict[str, float] | None = None

    @classmethod
    def load(cls, path: Path | None = None) -> EstimateTable:
        chosen = path or Path(os.environ.get(TABLE_VARIABLE) or SHIPPED_TABLE)
        try:
            data = json.loads(chosen.read_text())
            workflow = data["workflow"]
            return cls(
                as_of=str(data["as_of"]),
                source=str(data["source"]),
                currency=str(data["currency"]),
                hourly_prices={str(k): float(v) for k, v in data["hourly_prices"].items()},
                seconds_per_bundle=float(workflow["seconds_per_bundle"]),
                seconds_per_wave=float(workflow["seconds_per_wave"]),
                instance_start_seconds=float(workflow["instance_start_seconds"]),
                path=str(chosen),
                enclave={k: float(data["enclave"][k]) for k in ENCLAVE_TIMES} if "enclave" in data else None,
            )
        except FileNotFoundError:
            raise EstimateError(f"no estimate table at {chosen} ({TABLE_VARIABLE})") from None
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise EstimateError(f"the estimate table {chosen} is not usable: {error!r}") from None

    def for_enclave(self, fleet: FleetSizing) -> EstimateTable:
        """This table with the enclave fleet's times: its round of shards, and an instance's start from zero (the
        wait for the group's wake alarm, then EC2's launch, the boot and the enclave's start)."""
        if self.enclave is None:
            raise EstimateError(f"the estimate table {self.path} has no enclave section ({', '.join(ENCLAVE_TIMES)})")
        return replace(
            self,
            seconds_per_wave=self.enclave["seconds_per_wave"],
            instance_start_seconds=fleet.wake_after_seconds + self.enclave["instance_start_seconds"],
        )

    def hourly(self, instance_type: str) -> float:
        if instance_type not in self.hourly_prices:
            raise EstimateError(
                f"the estimate table {self.path} has no price for {instance_type}; add it to a copy of the table and "
                f"point {TABLE_VARIABLE} at it"
            )
        return self.hourly_prices[instance_type]


@dataclass(frozen=True)
class ModelCosts:
    """What one sample costs with this model, as Evaluate measured it in real FHE."""

    seconds_per_sample: float
    input_bytes_per_sample: float
    evaluation_key_bytes: int

    METRICS = ("fhe_seconds_per_sample_served", "input_ciphertext_bytes_per_sample", "evaluation_key_bytes")

    @classmethod
    def from_metrics(cls, metrics: dict[str, Any]) -> ModelCosts:
        """From Evaluate's metrics (plain values, or SageMaker's ``{"value": …}`` shape)."""
        values = {name: (v["value"] if isinstance(v, dict) else v) for name, v in metrics.items()}
        missing = [name for name in cls.METRICS if values.get(name) is None]
        if missing:
            raise EstimateError(
                f"the model's evaluation lacks {', '.join(missing)}: it was evaluated by an older pipeline"
            )
        return cls(float(values[cls.METRICS[0]]), float(values[cls.METRICS[1]]), int(values[cls.METRICS[2]]))

    @classmethod
    def from_enclave_metrics(cls, metrics: dict[str, Any]) -> ModelCosts:
        """An enclave model's costs (Evaluate's ``enclave_seconds_per_sample``, in clear, and the bytes a sample's
        encrypted record takes); no evaluation key."""
        try:
            return cls(float(metrics["enclave_seconds_per_sample"]), float(metrics["input_bytes_per_sample"]), 0)
        except (KeyError, TypeError, ValueError):
            raise EstimateError("the enclave model's evaluation lacks its seconds and bytes per sample") from None

    @classmethod
    def for_prompts(cls, metrics: dict[str, Any], max_new_tokens: int, bytes_per_prompt: float) -> ModelCosts:
        """A language model's costs per prompt for these settings: a prompt's own work and each new token's (as
        its registration measured them), and a prompt's encrypted bytes."""
        try:
            per_prompt = float(metrics["enclave_seconds_per_prompt"])
            per_token = float(metrics["enclave_seconds_per_token"])
        except (KeyError, TypeError, ValueError):
            raise EstimateError("the language model's registration measured no pace per prompt and token") from None
        return cls(per_prompt + per_token * max(0, max_new_tokens - 1), bytes_per_prompt, 0)

    def to_metrics(self) -> dict[str, float]:
        return dict(
            zip(
                self.METRICS,
                (self.seconds_per_sample, self.input_bytes_per_sample, self.evaluation_key_bytes),
                strict=True,
            )
        )


@dataclass(frozen=True)
class Serving:
    """The endpoint's limits, as deployed."""

    endpoint: str
    instance_type: str
    max_instances: int
    invocations_per_instance: int
    scale_in_cooldown: float
    instances_now: int | None = None  # None: not known, an instance start is counted


def serving_of(sagemaker: Any, scaling: Any, endpoint: str) -> Serving:
    """The limits of ``endpoint`` read back from SageMaker and Application Auto Scaling."""
    described = sagemaker.describe_endpoint(EndpointName=endpoint)
    config = sagemaker.describe_endpoint_config(EndpointConfigName=described["EndpointConfigName"])
    variant = config["ProductionVariants"][0]
    client_config = (config.get("AsyncInferenceConfig") or {}).get("ClientConfig") or {}
    resource = f"endpoint/{endpoint}/variant/{variant['VariantName']}"
    targets = scaling.describe_scalable_targets(ServiceNamespace=SCALING_NAMESPACE, ResourceIds=[resource])
    target = (targets.get("ScalableTargets") or [{}])[0]
    policies = scaling.describe_scaling_policies(ServiceNamespace=SCALING_NAMESPACE, ResourceId=resource)
    cooldowns = [
        p["TargetTrackingScalingPolicyConfiguration"].get("ScaleInCooldown", 0)
        for p in policies.get("ScalingPolicies", [])
        if p.get("TargetTrackingScalingPolicyConfiguration")
    ]
    running = [v.get("CurrentInstanceCount") for v in described.get("ProductionVariants", [])]
    return Serving(
        endpoint=endpoint,
        instance_type=str(variant["InstanceType"]),
        max_instances=int(target.get("MaxCapacity") or variant.get("InitialInstanceCount") or 1),
        invocations_per_instance=int(client_config.get("MaxConcurrentInvocationsPerInstance") or 1),
        scale_in_cooldown=float(max(cooldowns, default=0)),
        instances_now=int(running[0]) if running and running[0] is not None else None,
    )


@dataclass(frozen=True)
class FleetSizing:
    """The enclave fleet's limits, as deployed (the enclave stack's output ``EnclaveFleetSizing``, JSON)."""

    instance_type: str
    max_instances: int
    shards_per_instance: int
    wake_after_seconds: float

    @classmethod
    def parse(cls, text: str) -> FleetSizing:
        try:
            data = json.loads(text)
            sizing = cls(
                str(data["instance_type"]),
                int(data["max_instances"]),
                int(data["shards_per_instance"]),
                float(data["wake_after_seconds"]),
            )
        except (ValueError, KeyError, TypeError):
            raise EstimateError(
                f"the enclave fleet's sizing {text[:200]!r} is not the enclave stack's output EnclaveFleetSizing"
            ) from None
        if sizing.max_instances < 1 or sizing.shards_per_instance < 1 or sizing.wake_after_seconds < 0:
            raise EstimateError(f"the enclave fleet's sizing {text[:200]!r} has no instance or no shard per instance")
        return sizing

    def serving(self, table: EstimateTable) -> Serving:
        """The fleet as the estimate sees a server: instances up now are not known to an owner (an instance start
        is counted), and an idle instance is paid until target tracking's scale-in takes it away."""
        if table.enclave is None:
            raise EstimateError(f"the estimate table {table.path} has no enclave section ({', '.join(ENCLAVE_TIMES)})")
        return Serving(
            endpoint="enclave fleet",
            instance_type=self.instance_type,
            max_instances=self.max_instances,
            invocations_per_instance=self.shards_per_instance,
            scale_in_cooldown=table.enclave["scale_in_seconds"],
        )


@dataclass(frozen=True)
class Estimate:
    samples: int
    shards: int
    upload_bytes: int
    instances: int  # the instances the bundle keeps busy
    waves: int  # rounds of shards the endpoint runs at once
    fhe_seconds: float
    seconds: float
    cost: float
    currency: str
    instance_type: str
    hourly_price: float
    prices_as_of: str
    instance_start: bool  # whether an instance start from zero is counted
    path: str = "fhe"  # which path serves the bundle: FHE on the endpoint, or the attested enclave fleet

    def line(self) -> str:
        start = ", an instance start included" if self.instance_start else ""
        work = "FHE" if self.path == "fhe" else "inference in the enclave"
        return (
            f"estimate: {self.samples} samples in {self.shards} shard{'s' if self.shards != 1 else ''}, "
            f"{_size(self.upload_bytes)} to upload, "
            f"about {_duration(self.seconds)} ({_duration(self.fhe_seconds)} of {work} on {self.instances} "
            f"{self.instance_type}{start}), about {self.cost:.4f} {self.currency} at {self.hourly_price} "
            f"{self.currency}/h (prices of {self.prices_as_of})"
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def estimate(
    samples: int,
    shard_size: int,
    model: ModelCosts,
    serving: Serving,
    table: EstimateTable,
    *,
    key_uploaded: bool = True,
) -> Estimate:
    if samples < 1 or shard_size < 1:
        raise EstimateError(f"an estimate needs samples and a shard size of at least 1, got {samples}, {shard_size}")
    shards = math.ceil(samples / shard_size)
    per_instance = max(1, serving.invocations_per_instance)
    work = samples * model.seconds_per_sample
    cold = not serving.instances_now
    start = table.instance_start_seconds
    # The bundle runs on the instances up now (one, started from zero, when none is). More are counted only when
    # the work would outlast starting one: scaling out is triggered by the backlog and a new instance takes
    # ``instance_start_seconds`` before it helps, so a short bundle ends on the instances it found.
    first = max(1, min(serving.max_instances, serving.instances_now or 0))
    instances = first
    if work / first > start:
        instances = max(first, min(serving.max_instances, math.ceil(shards / per_instance)))
    waves = math.ceil(shards / (instances * per_instance))
    # The added instances help only after their start: first·t + added·(t - start) = work.
    fhe_seconds = (work + (instances - first) * start) / instances
    seconds = table.seconds_per_bundle + waves * table.seconds_per_wave + (start if cold else 0.0) + fhe_seconds
    hourly = table.hourly(serving.instance_type)
    # Every instance is paid from its launch until the scale-in cooldown after the last shard.
    billed = instances * (fhe_seconds + waves * table.seconds_per_wave + serving.scale_in_cooldown) + (
        first * start if cold else 0.0
    )
    upload = round(samples * model.input_bytes_per_sample) + (0 if key_uploaded else model.evaluation_key_bytes)
    return Estimate(
        samples=samples,
        shards=shards,
        upload_bytes=upload,
        instances=instances,
        waves=waves,
        fhe_seconds=round(fhe_seconds, 3),
        seconds=round(seconds, 1),
        cost=round(billed / 3600 * hourly, 6),
        currency=table.currency,
        instance_type=serving.instance_type,
        hourly_price=hourly,
        prices_as_of=table.as_of,
        instance_start=cold,
    )


def estimate_enclave(
    samples: int, shard_size: int, model: ModelCosts, fleet: FleetSizing, table: EstimateTable
) -> Estimate:
    """An enclave bundle's estimate: the same model of time and cost as an FHE bundle's, on the enclave fleet (its
    instances' EC2 price, its wake-up from zero, its scale-in), with the model's pace in clear."""
    made = estimate(samples, shard_size, model, fleet.serving(table), table.for_enclave(fleet))
    return replace(made, path="enclave")


def _size(count: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if count < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} GB"


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
