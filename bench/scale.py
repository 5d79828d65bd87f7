"""Production scale on the local stack: what orchestration costs per shard, a bundle of thousands of shards
within Step Functions' limits, the endpoint's cold start from zero instances and its scale-out for a burst.

    .venv/bin/python -m local.lifecycle up && eval "$(.venv/bin/python -m local.lifecycle env)"
    .venv/bin/python -m bench.scale [--big-shards 2000] [--burst 6]

1. ``fhe-deploy up`` with a short scale-in cooldown (``--scale-in-cooldown``), a logistic regression trained on
   breast cancer (milliseconds of FHE per sample, so what is measured is the orchestration), approved, deployed
   on the autoscaled endpoint (0 to 2 instances, 2 invocations each: the Map sends 4 shards at a time).
2. Cold start: once the endpoint is at zero instances, one bundle of one shard; the seconds from the drop to
   the first instance in service and to the result.
3. Orchestration per shard at 1, 10 and 100 samples per shard (``--shards`` shards each): the wall time from
   the drop to the result manifest, the endpoint's FHE time (the union over shards of the container's FHE
   intervals), seconds per shard and the orchestration's share.
4. A bundle of ``--big-shards`` one-sample shards end to end, next to the 20-shard bundle: wall time, and the
   bundle's own execution's largest state payload and history size (as AWS would count it); the limits
   guard (tests/limits.py) over the parent and every child execution.
5. The scale-out curve: ``--burst`` bundles dropped at once, the endpoint's instance count each second from
   the drop until it is back to zero after the cooldown.

Writes ``scale.json`` under ``--out`` for ``bench/report.py``. A benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.workflow import BENCH_OWNER, container_logs, fhe_seconds
from client.batch_client import BatchClient, ClientSettings
from common import aws
from common.bundle.store import object_exists
from common.settings import DeployedSettings, from_outputs
from common.workflow import bundle_executions
from containers.training.data import sample_records
from infrastructure.deployment import Deployment, up
from pipelines.approval import approve
from pipelines.endpoint import deploy_endpoint
from pipelines.runs import train_and_register
from tests import limits


class Bench:
    def __init__(
        self, deployed: DeployedSettings, state_machine_arn: str, endpoint: str, owner: BatchClient, work: Path
    ) -> None:
        self.deployed, self.state_machine_arn, self.owner, self.work = deployed, state_machine_arn, owner, work
        self.layout = owner.layout
        self.endpoint = endpoint  # the one serving the model's version
        self.pool = sample_records(4096, seed=11)

    def instances(self) -> int:
        described = aws.client("sagemaker").describe_endpoint(EndpointName=self.endpoint)
        return int(described["ProductionVariants"][0]["CurrentInstanceCount"])

    def wait_for_instances(self, count: int, timeout: float = 1800.0) -> float:
        started = time.monotonic()
        while self.instances() != count:
            if time.monotonic() - started > timeout:
                raise SystemExit(f"the endpoint did not reach {count} instances in {timeout:.0f} s")
            time.sleep(0.5)
        return time.monotonic() - started

    def encrypt(self, name: str, samples: int, shard_size: int) -> Path:
        folder = self.work / name
        rows = np.resize(self.pool, (samples, self.pool.shape[1]))
        return self.owner.encrypt(rows, folder, shard_size=shard_size, bundle_id=name).folder

    def drop(self, folder: Path) -> float:
        self.owner.submit(folder)
        return time.monotonic()

    def wait_for_result(self, name: str, dropped: float, timeout: float = 7200.0) -> float:
        s3, result = aws.client("s3"), self.layout.result_manifest(name)
        while not object_exists(s3, result):
            if object_exists(s3, self.layout.quarantine_reason(name)):
                raise SystemExit(f"bundle {name} was quarantined")
            if time.monotonic() - dropped > timeout:
                raise SystemExit(f"bundle {name} gave no result in {timeout:.0f} s")
            time.sleep(0.2)
        return time.monotonic() - dropped

    def execution_limits(self, name: str) -> dict[str, Any]:
        sfn = aws.client("stepfunctions")
        [arn] = bundle_executions(sfn, self.state_machine_arn, name)
        while sfn.describe_execution(executionArn=arn)["status"] == "RUNNING":
            time.sleep(0.5)
        parent, *children = limits.check(sfn, arn)
        return {
            "parent_largest_payload_bytes": parent.largest_payload,
            "parent_largest_at": parent.largest_at,
            "parent_history_events_aws": parent.aws_events,
            "children": len(children),
            "child_largest_payload_bytes": max((c.largest_payload for c in children), default=0),
            "child_history_events_aws_max": max((c.aws_events for c in children), default=0),
            "limits_violations": [v for m in (parent, *children) for v in m.violations],
        }

    def bundle(self, name: str, shards: int, samples_per_shard: int) -> dict[str, Any]:
        folder = self.encrypt(name, shards * samples_per_shard, samples_per_shard)
        dropped = self.drop(folder)
        wall = self.wait_for_result(name, dropped)
        time.sleep(1)  # the container's last log line may trail the result
        fhe, _ = fhe_seconds(container_logs(self.endpoint), name)
        measured = {
            "bundle_id": name,
            "shards": shards,
            "samples_per_shard": samples_per_shard,
            "wall_seconds": wall,
            "fhe_seconds": fhe,
            "seconds_per_shard": wall / shards,
            "orchestration_seconds_per_shard": (wall - fhe) / shards,
            "orchestration_share": (wall - fhe) / wall,
            **self.execution_limits(name),
        }
        print(
            f"{name}: {shards} shards × {samples_per_shard} samples in {wall:.1f} s ({wall / shards:.2f} s per "
            f"shard, orchestration {measured['orchestration_share']:.0%}); parent: largest state "
            f"{measured['parent_largest_payload_bytes']} bytes, {measured['parent_history_events_aws']} events",
            flush=True,
        )
        return measured

    def cold_start(self) -> dict[str, Any]:
        self.wait_for_instances(0)
        folder = self.encrypt("cold-start", 1, 1)
        dropped = self.drop(folder)
        first_instance = self.wait_for_instances(1)
        wall = self.wait_for_result("cold-start", dropped)
        print(f"cold start: an instance in {first_instance:.1f} s, the result in {wall:.1f} s", flush=True)
        return {"seconds_to_first_instance": first_instance, "seconds_to_result": wall}

    def burst(self, bundles: int, shards: int) -> dict[str, Any]:
        self.wait_for_instances(0)
        folders = [self.encrypt(f"burst-{i}", shards, 1) for i in range(bundles)]
        curve: list[tuple[float, int]] = []
        done = threading.Event()
        start = time.monotonic()

        def sample() -> None:
            while not done.wait(1.0):
                curve.append((round(time.monotonic() - start, 1), self.instances()))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        for folder in folders:
            self.drop(folder)
        walls = [self.wait_for_result(folder.name, start) for folder in folders]
        all_done = max(walls)
        self.wait_for_instances(0)
        done.set()
        sampler.join()
        peak = max(count for _, count in curve)
        reached = {n: next((t for t, c in curve if c >= n), None) for n in range(1, peak + 1)}
        back_to_zero = next((t for t, c in curve if t > all_done and c == 0), None)
        print(
            f"burst of {bundles} bundles × {shards} shards: peak {peak} instances, reached at "
            f"{reached} s, all results at {all_done:.0f} s, zero instances again at {back_to_zero} s",
            flush=True,
        )
        return {
            "bundles": bundles,
            "shards_per_bundle": shards,
            "curve": curve,
            "peak_instances": peak,
            "seconds_to_instances": reached,
            "seconds_to_all_results": all_done,
            "seconds_to_zero_again": back_to_zero,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=20, help="shards per bundle for the per-shard figures")
    parser.add_argument("--big-shards", type=int, default=2000)
    parser.add_argument("--burst", type=int, default=6, help="bundles dropped at once")
    parser.add_argument("--scale-in-cooldown", type=int, default=60)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    deployment = Deployment(
        prefix="fhe-scale-bench",
        endpoint_name="fhe-scale-bench",
        pipeline_name="fhe-scale-bench-training",
        package_group="fhe-scale-bench",
        scale_in_cooldown=args.scale_in_cooldown,
        scale_out_cooldown=10,
    )
    print("deploying, training a logistic regression, deploying the autoscaled endpoint…", flush=True)
    outputs = up(deployment, report=lambda line: None)
    deployed = from_outputs(outputs, region=aws.region())
    package_arn = train_and_register(deployed.pipeline, parameters={"ModelType": "logistic_regression"})
    approve(package_arn, deployed.pipeline.package_group, "Approved", "scale benchmark")
    endpoint = deploy_endpoint(deployed.endpoint)["endpoint"]
    with tempfile.TemporaryDirectory(prefix="fhe-scale-") as scratch:
        work = Path(scratch)
        owner = BatchClient(ClientSettings.for_deployment(outputs, BENCH_OWNER, home=work / "home"))
        owner.keys()
        bench = Bench(deployed, outputs["StateMachineArn"], endpoint, owner, work)
        cold = bench.cold_start()
        per_shard = [bench.bundle(f"per-shard-{n}", args.shards, n) for n in (1, 10, 100)]
        big = bench.bundle(f"big-{args.big_shards}", args.big_shards, 1)
        burst = bench.burst(args.burst, args.shards)
    record = {
        "command": f"python -m bench.scale --shards {args.shards} --big-shards {args.big_shards} "
        f"--burst {args.burst} --scale-in-cooldown {args.scale_in_cooldown}",
        "map_concurrency": deployment.map_concurrency,
        "cold_start": cold,
        "per_shard": per_shard,
        "big_bundle": big,
        "small_bundle": per_shard[0],
        "burst": burst,
    }
    (args.out / "scale.json").write_text(json.dumps(record, indent=2))
    print(f"wrote {args.out / 'scale.json'}")


if __name__ == "__main__":
    main()
