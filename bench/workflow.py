"""Through the whole product on the local stack: container throughput, orchestration overhead, bytes per bundle.

    .venv/bin/python -m local.lifecycle up && eval "$(.venv/bin/python -m local.lifecycle env)"
    .venv/bin/python bench/workflow.py [--samples 100] [--shard-size 25] [--throughput-samples 32]

1. ``fhe-deploy up``, the pipeline trains the tuned network (the product's defaults) on the digits data set,
   the package is approved and deployed on the async endpoint.
2. The batch owner makes keys once, then drops two bundles of ``--samples`` digits rows. For each: the wall
   time from the manifest's put (the drop) to the result manifest, the container's FHE time (from its log:
   the union over shards of the time the engine spent evaluating), their difference as the orchestration
   overhead, the bytes the client put, and the evaluation-key bytes the endpoint fetched.
3. The serving container itself (``python -m containers.inference serve``, what the image runs) is started
   with one FHE worker, then with one per core (one thread per sample, as shipped), then with one worker
   whose samples use every core (Concrete's loop parallelism), and answers the same shard request of
   ``--throughput-samples`` rows; samples per second for each (the better of two requests after a warm-up).

Writes ``workflow.json`` under ``--out`` for ``bench/report.py``. A benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from client.batch_client import BatchClient, ClientSettings
from common import artifacts, aws
from common.bundle.messages import ShardRequest
from common.bundle.store import object_exists, put_bundle
from common.s3uri import S3Uri
from common.settings import from_outputs
from containers.training.data import builtin_dataset_csv, load_table, write_records_csv
from infrastructure.deployment import Deployment, up
from local.lifecycle import sagemaker_state_dir
from local.ports import free_port
from pipelines.approval import approve
from pipelines.clear_predictions import download_model
from pipelines.endpoint import deploy_endpoint
from pipelines.runs import train_and_register

SHARD_LOG = re.compile(
    r"^(?P<at>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*shard evaluated: bundle (?P<bundle>\S+) shard (?P<shard>\d+), "
    r"(?P<samples>\d+) samples in (?P<total>[\d.]+) s \(FHE (?P<fhe>[\d.]+) s\)"
)
KEY_LOG = re.compile(r"evaluation key \S+ fetched for bundle (?P<bundle>\S+): (?P<bytes>\d+) bytes")

BENCH_OWNER = "bench"  # the batch owner of the benchmarks' bundles (run with the deployment's own credentials)


def digits_rows(samples: int) -> tuple[list[str], np.ndarray]:  # type: ignore[type-arg]
    with tempfile.TemporaryDirectory() as scratch:
        table = load_table(builtin_dataset_csv("digits", Path(scratch) / "digits.csv"))
    rows = np.random.default_rng(7).permutation(len(table.x))[:samples]
    return table.feature_names, table.x[rows]


def container_logs(endpoint: str) -> str:
    """Every log of the endpoint's serving containers (one per deployment), as the local SageMaker keeps them."""
    logs = sorted((sagemaker_state_dir() / "endpoints" / endpoint).glob("*/container.log"))
    if not logs:
        raise SystemExit(f"no container log for endpoint {endpoint}")
    return "\n".join(path.read_text(errors="replace") for path in logs)


def union_seconds(intervals: list[tuple[float, float]]) -> float:
    """Seconds covered by at least one interval: shards evaluated at once count once."""
    covered, end = 0.0, float("-inf")
    for start, stop in sorted(intervals):
        if stop > end:
            covered += stop - max(start, end)
            end = stop
    return covered


def fhe_seconds(log_text: str, bundle_id: str) -> tuple[float, int]:
    intervals = []
    for line in log_text.splitlines():
        match = SHARD_LOG.match(line)
        if match and match["bundle"] == bundle_id:
            finished = datetime.strptime(match["at"], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            intervals.append((finished - float(match["fhe"]), finished))
    return union_seconds(intervals), len(intervals)


def run_bundle(
    owner: BatchClient, served: str, shard_size: int, work: Path, package_arn: str, name: str
) -> dict[str, Any]:
    """``served``: the endpoint serving the package's version."""
    s3 = aws.client("s3")
    encrypted = owner.encrypt(work / "records.csv", work / name, shard_size=shard_size, package_arn=package_arn)
    manifest, folder = encrypted.manifest, encrypted.folder
    put_bytes = sum(entry.size for entry in manifest.shards) + len((folder / "manifest.json").read_bytes())
    owner.submit(folder)
    dropped = time.monotonic()
    result = owner.layout.result_manifest(manifest.bundle_id)
    while not object_exists(s3, result):
        if time.monotonic() - dropped > 1800:
            raise SystemExit(f"bundle {manifest.bundle_id} gave no result in 30 minutes")
        time.sleep(0.1)
    wall = time.monotonic() - dropped
    time.sleep(1)  # the container's last log line may trail the result by a moment
    text = container_logs(served)
    fhe, shards = fhe_seconds(text, manifest.bundle_id)
    key_bytes = sum(int(m["bytes"]) for m in KEY_LOG.finditer(text) if m["bundle"] == manifest.bundle_id)
    samples = sum(entry.samples for entry in manifest.shards)
    return {
        "bundle_id": manifest.bundle_id,
        "samples": samples,
        "shards": shards,
        "wall_seconds_drop_to_result": wall,
        "container_fhe_seconds": fhe,
        "orchestration_seconds": wall - fhe,
        "orchestration_share": (wall - fhe) / wall,
        "client_put_bytes": put_bytes,
        "shard_bytes_per_sample": sum(entry.size for entry in manifest.shards) / samples,
        "evaluation_key_bytes_fetched_by_endpoint": key_bytes,
    }


def container_throughput(package_arn: str, request: ShardRequest, workers: int, threads: int | None) -> dict[str, Any]:
    """The serving container with ``workers`` FHE workers answering one shard request (after a warm-up one).

    ``threads``: Concrete's threads per sample (OMP_NUM_THREADS); None leaves the container's own choice."""
    with tempfile.TemporaryDirectory(prefix="fhe-container-") as scratch:
        root = Path(scratch)
        download_model(package_arn, root / "opt/ml/model")
        port = free_port()
        environment = {
            **os.environ,
            "SAGEMAKER_CONTAINER_ROOT": str(root),
            artifacts.PACKAGE_ARN_VARIABLE: package_arn,
            "FHE_WORKERS": str(workers),
        }
        environment.pop("OMP_NUM_THREADS", None)
        if threads is not None:
            environment["OMP_NUM_THREADS"] = str(threads)
        command = [sys.executable, "-m", "containers.inference", "serve", "--host", "127.0.0.1", "--port", str(port)]
        with (root / "container.log").open("wb") as log:
            process = subprocess.Popen(command, env=environment, stdout=log, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 120
            while True:
                try:
                    with urllib.request.urlopen(url + "/ping", timeout=2):  # noqa: S310 - loopback
                        break
                except OSError:
                    if time.monotonic() > deadline or process.poll() is not None:
                        raise SystemExit((root / "container.log").read_text()[-2000:]) from None
                    time.sleep(0.5)
            timings = []
            for _ in range(3):  # the first request also fetches and loads the evaluation key
                invocation = urllib.request.Request(  # noqa: S310 - loopback
                    url + "/invocations", data=request.to_json(), method="POST"
                )
                started = time.perf_counter()
                with urllib.request.urlopen(invocation, timeout=3600) as response:  # noqa: S310 - loopback
                    answer = json.loads(response.read())
                timings.append(time.perf_counter() - started)
        finally:
            process.terminate()
            process.wait(30)
    return {
        "workers": workers,
        "threads_per_sample": threads or 1,
        "samples": answer["samples"],
        "seconds_first_request": timings[0],
        "seconds": min(timings[1:]),  # the better of two: the other core is not always idle
        "samples_per_second": answer["samples"] / min(timings[1:]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=100, help="rows per bundle")
    parser.add_argument("--shard-size", type=int, default=25)
    parser.add_argument("--throughput-samples", type=int, default=32, help="rows in the container's shard")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    print("deploying, training the tuned network on digits, deploying the endpoint…", flush=True)
    deployed = from_outputs(up(Deployment(), report=lambda line: None), region=aws.region())
    package_arn = train_and_register(
        deployed.pipeline, dataset="digits", parameters={"ModelType": "neural_network", "FheSampleSize": "2"}
    )
    approve(package_arn, deployed.pipeline.package_group, "Approved", "benchmark")
    served = deploy_endpoint(deployed.endpoint)["endpoint"]
    bucket, group = deployed.endpoint.output_bucket, deployed.endpoint.package_group
    bundles = []
    with tempfile.TemporaryDirectory(prefix="fhe-bench-") as scratch:
        work = Path(scratch)
        owner = BatchClient(
            ClientSettings(BENCH_OWNER, bucket, group, deployed.endpoint.endpoint_name, home=work / "home")
        )
        owner.keys()
        names, x = digits_rows(args.samples)
        write_records_csv(work / "records.csv", names, x)
        for name in ("first", "second"):
            bundle = run_bundle(owner, served, args.shard_size, work, package_arn, name)
            bundles.append(bundle)
            print(
                f"bundle {name}: {bundle['samples']} samples in {bundle['shards']} shards, "
                f"{bundle['wall_seconds_drop_to_result']:.1f} s drop to result, "
                f"FHE {bundle['container_fhe_seconds']:.1f} s, "
                f"orchestration {bundle['orchestration_seconds']:.1f} s ({bundle['orchestration_share']:.1%}), "
                f"key bytes fetched {bundle['evaluation_key_bytes_fetched_by_endpoint']}",
                flush=True,
            )
        throughput_rows = work / "throughput"
        sample = x[: args.throughput_samples]
        manifest = owner.encrypt(sample, throughput_rows, shard_size=len(sample), package_arn=package_arn).manifest
        # Put aside from the inbox, so that the workflow does not pick it up while the container is measured.
        manifest_uri = put_bundle(
            aws.client("s3"),
            S3Uri(bucket, f"bench/{manifest.bundle_id}"),
            manifest,
            lambda entry: (throughput_rows / entry.key).read_bytes(),
        )
        request = ShardRequest(
            manifest_uri=str(manifest_uri),
            shard_index=0,
            result_uri=str(S3Uri(bucket, f"bench/{manifest.bundle_id}/throughput.shard")),
        )
        cores = os.cpu_count() or 1
        throughput = []
        # The container as shipped (one thread per sample) with one worker and with one per core; then one
        # worker whose samples use every core through Concrete's loop parallelism, the alternative.
        for workers, threads in ((1, None), (cores, None), (1, cores)):
            measured = container_throughput(package_arn, request, workers, threads)
            throughput.append(measured)
            print(
                f"container, {workers} worker(s) x {measured['threads_per_sample']} thread(s): "
                f"{measured['samples_per_second']:.2f} samples/s",
                flush=True,
            )
    command = "python bench/workflow.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out"
    )
    record = {"command": command, "cores": os.cpu_count(), "bundles": bundles, "throughput": throughput}
    (args.out / "workflow.json").write_text(json.dumps(record, indent=2))
    print(f"wrote {args.out / 'workflow.json'}")


if __name__ == "__main__":
    main()
