"""Per-sample FHE latency of the default models, with one worker and with every core.

    python bench/fhe_latency.py [--models logistic_regression,decision_tree] [--samples 16] [--dataset breast_cancer]

Each model is trained with the pipeline's default settings (the Train step's own code), then a shard of
``--samples`` ciphertexts goes through the inference engine exactly as on the endpoint: once with one worker
thread, once with one per core. A benchmark, not a test: it prints, it asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import tempfile
import time
from pathlib import Path

from common import artifacts
from common.preprocessing import PreprocessingRecord
from containers.inference.engine import InferenceEngine
from containers.training.data import builtin_dataset_csv, load_table
from containers.training.models import MODEL_TYPES, TrainingSettings
from containers.training.preprocess import preprocess
from containers.training.train import train


def measure(model_dir: Path, raw_rows: object, samples: int, workers: int, repeat: int) -> float:
    from concrete.ml.deployment import FHEModelClient

    with tempfile.TemporaryDirectory() as keys:
        client = FHEModelClient(path_dir=str(model_dir), key_dir=keys)
        client.generate_private_and_evaluation_keys()
        record = PreprocessingRecord.load(model_dir / artifacts.PREPROCESSING_JSON)
        x = record.transform(raw_rows)[:samples]  # type: ignore[arg-type]
        ciphertexts = [client.quantize_encrypt_serialize(row[None, :]) for row in x]
        engine = InferenceEngine(model_dir, workers=workers)
        try:
            keys_loaded = engine.load_keys(client.get_serialized_evaluation_keys(), "bench")
            engine.run_one(ciphertexts[0], keys_loaded)  # warm-up: first-call costs are not per-sample costs
            best = float("inf")
            for _ in range(repeat):
                started = time.perf_counter()
                engine.run_many(ciphertexts, keys_loaded)
                best = min(best, (time.perf_counter() - started) / len(ciphertexts))
            return best
        finally:
            engine.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODEL_TYPES), help="comma-separated model types")
    parser.add_argument("--samples", type=int, default=16, help="ciphertexts per measurement")
    parser.add_argument("--repeat", type=int, default=3, help="measurements per setting; the best is shown")
    parser.add_argument("--dataset", default="breast_cancer", choices=("breast_cancer", "digits"))
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    print(f"dataset {args.dataset}, {args.samples} samples per measurement, {cores} cores")
    print(f"{'model':<22}{'1 worker (s/sample)':>22}{f'{cores} workers (s/sample)':>24}{'speed-up':>10}")
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        source = builtin_dataset_csv(args.dataset, root / "in" / f"{args.dataset}.csv")
        with contextlib.redirect_stdout(io.StringIO()):
            preprocess(source.parent, root / "splits", "label", 0.25, 42)
        raw = load_table(source).x
        for model_type in args.models.split(","):
            model_dir = root / model_type
            settings = TrainingSettings(model_type=model_type)
            with contextlib.redirect_stdout(io.StringIO()):  # the Train step reports in JSON on stdout
                train(settings, root / "splits/train", root / "splits/preprocessing", model_dir)
            single = measure(model_dir, raw, args.samples, 1, args.repeat)
            parallel = measure(model_dir, raw, args.samples, cores, args.repeat)
            print(f"{model_type:<22}{single:>22.4f}{parallel:>24.4f}{single / parallel:>9.2f}x", flush=True)


if __name__ == "__main__":
    main()
