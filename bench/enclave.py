"""The same tabular data set through both paths: breast cancer, FHE (logistic regression and the default tree, real
FHE through the endpoint's inference engine) against the attested enclave (a float logistic regression and a
500-tree XGBoost model, through the enclave application).

    .venv/bin/python -m bench.enclave [--fhe-samples 20] [--shard-size 100] [--out bench/results]

For each model:

- accuracy on the test split: clear, and as served (real FHE on ``--fhe-samples`` rows; the enclave serves the
  float model itself, so its served accuracy is its clear accuracy on the whole split);
- seconds per sample as served, on this machine: FHE as ``bench/recipe.py`` measures a shard (one sample per core);
  the enclave as ``EnclaveApplication.run`` serves a shard of ``--shard-size`` records: its NSM's attestation
  document (signed by the local NSM emulator), KMS's ``Decrypt`` with ``Recipient`` answered by the local AWS's own
  code (document verified, key policy's measurement compared, CMS envelope made) in-process, the envelope opened
  with the ephemeral RSA key, the records decrypted, the model run, the predictions sealed to the owner. KMS's round
  trip (through the parent's vsock proxy on AWS) and S3's are not in it; the per-shard part is also given alone
  (a one-record shard);
- cost per 1,000 samples at the estimate table's prices (``common/estimates.json``): the busy instance time alone
  (the samples at the measured pace), and the owner's estimate of a 1,000-sample bundle from zero instances
  (``common/estimate.py``: the instance start, the rounds of shards, the scale-in time an idle instance is paid);
  FHE on the endpoint's default instance type, the enclave on the fleet's default, one instance each at most;
- cold start from zero on AWS, as the estimate table counts it (SageMaker's endpoint instance against the enclave
  fleet's wake alarm plus an EC2 instance's launch and enclave start); the local stack's own are in the demo's
  output (``make demo``).

Writes ``enclave.json`` under ``--out``. A benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import os
import platform
import secrets
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import cbor2
import numpy as np
from aws_emulators.local_aws.kms_recipient import envelope, verified_recipient
from aws_emulators.nitro.authority import AttestationAuthority
from aws_emulators.nitro.nsm import Nsm as EmulatedNsm
from cryptography.hazmat.primitives.asymmetric import x25519

from bench.recipe import TREE_TUNED, bench_one
from common.bundle.binding import ShardBinding
from common.bundle.enclave_crypto import encrypt_records, open_results, records_to_bytes
from common.enclave_model import EnclaveModelRecord
from common.estimate import (
    SHIPPED_TABLE,
    EstimateTable,
    FleetSizing,
    ModelCosts,
    Serving,
    estimate,
    estimate_enclave,
)
from common.settings import ENDPOINT_INSTANCE_TYPE
from containers.enclave.application import EnclaveApplication, ShardWork
from containers.enclave.key_release import KeyRelease
from containers.enclave.models import load_model
from containers.enclave.nsm import Nsm
from containers.training.circuit_cost import measure_pace
from containers.training.data import builtin_dataset_csv
from containers.training.enclave_training import EnclaveTrainingSettings, train_enclave_model
from containers.training.evaluate import predict_classes
from containers.training.preprocess import preprocess
from containers.training.train import load_split, load_training_inputs
from containers.training.training_settings import TrainingSettings
from infrastructure.enclave_fleet import EnclaveFleet

DATASET = "breast_cancer"
FHE_MODELS = {
    "fhe-logistic-regression": TrainingSettings(model_type="logistic_regression"),
    "fhe-tree": TREE_TUNED,
}
ENCLAVE_MODELS = {
    "enclave-logistic-regression": EnclaveTrainingSettings(model_type="logistic_regression"),
    "enclave-xgboost-500": EnclaveTrainingSettings(model_type="xgboost", n_estimators=500),
}
REPEATS = 5  # shards timed per enclave model (the median is kept)
PER_THOUSAND = 1000


class InProcessNsm:
    """The NSM transport of ``containers/enclave/nsm.py`` to the NSM emulator, in this process (no socket)."""

    def __init__(self, nsm: EmulatedNsm) -> None:
        self.nsm = nsm

    def exchange(self, request: bytes) -> bytes:
        return bytes(cbor2.dumps(self.nsm.answer(cbor2.loads(request))))


class RecipientKms:
    """``Decrypt`` with ``Recipient`` as the local AWS answers it (``aws_emulators.local_aws.kms_recipient``), for
    the one data key of the benchmark's bundle, with the key policy's measurement compared."""

    def __init__(self, authority: AttestationAuthority, data_key: bytes, measurement: bytes) -> None:
        self.authority, self.data_key, self.measurement = authority, data_key, measurement

    def decrypt(self, **call: Any) -> dict[str, Any]:
        recipient = dict(call["Recipient"])
        recipient["AttestationDocument"] = base64.b64encode(recipient["AttestationDocument"]).decode()
        document, public_key = verified_recipient(recipient, self.authority.root)
        if document.pcrs[0] != self.measurement:
            raise PermissionError("the key policy names another measurement")
        return {"CiphertextForRecipient": envelope(self.data_key, public_key), "KeyId": "bench"}


def enclave_shard_seconds(
    model_folder: Path,
    x: np.ndarray,  # type: ignore[type-arg]
    authority: AttestationAuthority,
    shard_size: int,
) -> dict[str, float]:
    """The enclave application serving a shard of ``shard_size`` records and a one-record shard: median seconds."""
    record, content = EnclaveModelRecord.load(model_folder)
    model = load_model(record.format, content)
    measurement = secrets.token_bytes(48)
    emulated = EmulatedNsm({0: measurement, 1: bytes(48), 2: bytes(48)}, authority.issue_signer("i-bench"), "i-bench")
    data_key = secrets.token_bytes(32)
    application = EnclaveApplication(
        model, KeyRelease(RecipientKms(authority, data_key, measurement), Nsm(InProcessNsm(emulated)))
    )
    owner = x25519.X25519PrivateKey.generate()
    owner_public = owner.public_key().public_bytes_raw()

    def serve(rows: np.ndarray) -> float:  # type: ignore[type-arg]
        binding = ShardBinding("bench-owner", "bench-bundle", 0)
        work = ShardWork(
            binding, b"blob", encrypt_records(data_key, records_to_bytes(rows), binding), owner_public
        )  # fmt: skip
        started = time.perf_counter()
        answer = application.run(work)
        seconds = time.perf_counter() - started
        open_results(owner, answer.sealed_results, binding)  # the owner's side, not timed: it opens
        return seconds

    rows = np.resize(x, (shard_size, x.shape[1]))  # the test split repeated to a full shard
    serve(rows[:1])  # the first call's imports and warm-up are no shard's cost
    shard = statistics.median(serve(rows) for _ in range(REPEATS))
    single = statistics.median(serve(rows[:1]) for _ in range(REPEATS))
    return {"shard_seconds": shard, "one_record_shard_seconds": single, "seconds_per_sample": shard / shard_size}


def bench_enclave(
    name: str, settings: EnclaveTrainingSettings, splits: Path, authority: AttestationAuthority, shard_size: int
) -> dict[str, Any]:
    x_test, y_test = load_split(splits / "test", "test")
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "model"
        x, y, record = load_training_inputs(splits / "train", splits / "preprocessing")
        with contextlib.redirect_stdout(io.StringIO()):  # the Train step reports in JSON on stdout
            summary = train_enclave_model(settings, x, y, record, folder)
        model_record, content = EnclaveModelRecord.load(folder)
        model = load_model(model_record.format, content)
        predicted = predict_classes(np.asarray(model.predict(x_test.astype(np.float64))))
        timed = enclave_shard_seconds(folder, x_test.astype(np.float64), authority, shard_size)
    accuracy = float((predicted == y_test).mean())
    return {
        "model": name,
        "path": "enclave",
        "settings": settings.to_dict(),
        "test_rows": len(y_test),
        "accuracy_clear": accuracy,
        "accuracy_served": accuracy,
        "served_samples": len(y_test),
        "model_bytes": len(content),
        "fit_seconds": summary["fit_seconds"],
        **timed,
        "shard_size": shard_size,
        "input_bytes_per_sample": 8.0 * x_test.shape[1],
    }


def costs(result: dict[str, Any], table: EstimateTable) -> dict[str, Any]:
    """Cost per 1,000 samples at the table's prices: the busy instance time alone, and the estimate of a 1,000-sample
    bundle from zero instances on one instance at most (shards of 100)."""
    pace = ModelCosts(result["seconds_per_sample"], result["input_bytes_per_sample"], 0)
    if result["path"] == "fhe":
        instance_type = ENDPOINT_INSTANCE_TYPE
        serving = Serving("bench", instance_type, max_instances=1, invocations_per_instance=1, scale_in_cooldown=600,
                          instances_now=0)  # fmt: skip
        made = estimate(PER_THOUSAND, 100, pace, serving, table)
        cold_start = table.instance_start_seconds
    else:
        default = EnclaveFleet(Path("enclave.eif"), ami="ami-default", subnets=("subnet-default",))
        instance_type = default.instance_type
        fleet = FleetSizing(instance_type, 1, default.shards_per_instance, float(default.wake_after_seconds))
        made = estimate_enclave(PER_THOUSAND, 100, pace, fleet, table)
        assert table.enclave is not None
        cold_start = fleet.wake_after_seconds + table.enclave["instance_start_seconds"]
    busy = PER_THOUSAND * result["seconds_per_sample"] / 3600 * table.hourly(instance_type)
    return {
        "instance_type": instance_type,
        "hourly_price": table.hourly(instance_type),
        "busy_cost_per_1000": round(busy, 6),
        "bundle_of_1000_from_zero": {"seconds": made.seconds, "cost": made.cost, "line": made.line()},
        "cold_start_seconds_on_aws": cold_start,
        "prices_as_of": table.as_of,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fhe-samples", type=int, default=20, help="test rows run in real FHE per FHE model")
    parser.add_argument("--shard-size", type=int, default=100, help="records per enclave shard timed")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # as the serving container runs FHE: one thread per sample
    args.out.mkdir(parents=True, exist_ok=True)
    table = EstimateTable.load(SHIPPED_TABLE)  # AWS's prices and times, whatever FHE_ESTIMATE_TABLE says
    results = []
    print(f"{'model':<30}{'clear':>7}{'served':>12}{'s/sample':>11}{'$/1000 busy':>13}{'$ 1000 cold':>13}"
          f"{'cold s':>8}", flush=True)  # fmt: skip
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        source = builtin_dataset_csv(DATASET, root / "in" / f"{DATASET}.csv")
        with contextlib.redirect_stdout(io.StringIO()):
            preprocess(source.parent, root / "splits", "label", 0.25, 42)
        authority = AttestationAuthority.ensure(root / "attestation")
        pace = measure_pace()
        rows: list[dict[str, Any]] = []
        for name, fhe_settings in FHE_MODELS.items():
            measured = bench_one(DATASET, name, fhe_settings, root / "splits", args.fhe_samples, pace)
            rows.append({
                "model": name, "path": "fhe", "settings": measured["settings"], "test_rows": measured["test_rows"],
                "accuracy_clear": measured["accuracy_clear"], "accuracy_served": measured["accuracy_fhe"],
                "served_samples": measured["fhe_samples"], "seconds_per_sample": measured["seconds_per_sample"],
                "programmable_bootstrap_count": measured["programmable_bootstrap_count"],
                "evaluation_key_bytes": measured["evaluation_key_bytes"],
                "input_bytes_per_sample": measured["input_bytes_per_sample"],
            })  # fmt: skip
        for name, enclave_settings in ENCLAVE_MODELS.items():
            rows.append(bench_enclave(name, enclave_settings, root / "splits", authority, args.shard_size))
        for row in rows:
            row["cost"] = costs(row, table)
            results.append(row)
            served = f"{row['accuracy_served']:.3f}/{row['served_samples']}"
            print(
                f"{row['model']:<30}{row['accuracy_clear']:>7.3f}{served:>12}{row['seconds_per_sample']:>11.5f}"
                f"{row['cost']['busy_cost_per_1000']:>13.6f}{row['cost']['bundle_of_1000_from_zero']['cost']:>13.4f}"
                f"{row['cost']['cold_start_seconds_on_aws']:>8.0f}",
                flush=True,
            )
    record = {
        "command": f"python -m bench.enclave --fhe-samples {args.fhe_samples} --shard-size {args.shard_size}",
        "machine": {"cores": os.cpu_count(), "processor": platform.processor() or platform.machine()},
        "dataset": DATASET,
        "results": results,
    }
    (args.out / "enclave.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    print(f"wrote {args.out / 'enclave.json'}")


if __name__ == "__main__":
    main()
