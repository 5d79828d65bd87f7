"""The reference network against the product's tuned defaults, with the bootstrap floor and the bytes moved.

    .venv/bin/python bench/recipe.py [--datasets digits,digits_28x28] [--fhe-samples 20] [--out bench/results]
    .venv/bin/python bench/recipe.py --recipes tuned --variant NAME:LEVER=VALUE,... --name variants
    .venv/bin/python bench/recipe.py --recipes reference,tuned,searched,tree-reference,tree-tuned,tree-searched \
        --datasets digits,digits_28x28,breast_cancer --tree-datasets breast_cancer --name search

For each data set and recipe, the Preprocess and Train steps' own code fits and compiles the network; then:

- accuracy on the test split: clear (the float network), FHE-simulated (whole split, the mean of 5 runs since
  each draws its own bootstrap errors) and real FHE (keygen, encrypt, ``FHEModelServer.run`` through the
  endpoint's inference engine, decrypt) on ``--fhe-samples`` rows;
- the circuit's bootstrap (PBS) count and crypto parameters;
- seconds per sample, as the serving container runs a shard: one sample per core, each on one thread; the
  time of the shard over its samples;
- the floor: a layer of activations compiled on its own (the same accumulator width, rounding and activation
  bits), timed on one core, gives the cost of one bootstrap of that kind; the floor is PBS count * that / cores;
- evaluation-key bytes and ciphertext bytes in and out per sample, as serialized for the bundle;
- the seconds per sample the lever search expects of the circuit (its complexity at the measured pace), against
  those measured; for the ``*searched`` recipes, every candidate the search explored.

Writes ``<name>.json`` under ``--out`` for ``bench/report.py``. A benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from common import artifacts
from common.bundle.schema import sha256_hex
from containers.inference.engine import InferenceEngine
from containers.training.circuit_cost import (
    CircuitCost,
    Pace,
    activation_layer_seconds_on_one_core,
    circuit_parameters,
    measure_pace,
)
from containers.training.concrete_internals import activation_rounding, clear_predictions
from containers.training.data import builtin_dataset_csv
from containers.training.preprocess import preprocess
from containers.training.search import SEARCH_SPACE, SearchSettings, chosen_settings, lever_value, search
from containers.training.train import load_split, train
from containers.training.training_settings import TrainingSettings

# The reference deployment's network, with Concrete ML's own defaults for everything it did not set: an
# unbounded accumulator, exact rounding, p_error 2^-40, no compression.
REFERENCE = TrainingSettings(
    model_type="neural_network",
    module__n_layers=2,
    module__n_w_bits=4,
    module__n_a_bits=4,
    module__n_accum_bits=32,
    module__n_hidden_neurons_multiplier=0.5,
    rounding="exact",
    p_error=2.0**-40,
    compress_evaluation_keys=False,
    compress_input_ciphertexts=False,
)
# The product's defaults for a network: what the pipeline trains when no hyperparameter is given.
TUNED = TrainingSettings(model_type="neural_network")
# A tree at Concrete ML's default 6 bits and depth 5, and the product's default tree (5 bits, depth 4).
TREE_REFERENCE = TrainingSettings(model_type="decision_tree", n_bits=6, max_depth=5)
TREE_TUNED = TrainingSettings(model_type="decision_tree")
# "searched": the Train step's lever search from the product's defaults, nothing pinned, on the data set's
# training split (the test split stays the benchmark's).
RECIPES = {
    "reference": REFERENCE,
    "tuned": TUNED,
    "searched": TUNED,
    "tree-reference": TREE_REFERENCE,
    "tree-tuned": TREE_TUNED,
    "tree-searched": TREE_TUNED,
}
SIMULATIONS = 5


def variant(spec: str) -> tuple[str, TrainingSettings]:
    """``name:lever=value,...``: the tuned recipe with those hyperparameters changed, checked as the Train step does."""
    name, _, changes = spec.partition(":")
    levers = {k: str(v) for k, v in TUNED.to_dict().items()}
    for change in filter(None, changes.split(",")):
        lever, _, value = change.partition("=")
        levers[lever.strip()] = value.strip()
    return name, TrainingSettings.from_hyperparameters(levers)


def serve_shard(model_dir: Path, x: np.ndarray, workers: int) -> dict[str, Any]:  # type: ignore[type-arg]
    """Keygen, encrypt each row, evaluate them as one shard on the inference engine, decrypt."""
    from concrete.ml.deployment import FHEModelClient

    with tempfile.TemporaryDirectory() as keys:
        client = FHEModelClient(path_dir=str(model_dir), key_dir=keys)
        client.generate_private_and_evaluation_keys()
        evaluation_keys = client.get_serialized_evaluation_keys()
        ciphertexts = [client.quantize_encrypt_serialize(row[None, :]) for row in x]
        engine = InferenceEngine(model_dir, evaluators=1, threads=workers)
        key_sha256 = sha256_hex(evaluation_keys)
        try:
            # Loading the key and the first call's costs are not per-sample costs.
            engine.evaluate(key_sha256, lambda: evaluation_keys, ciphertexts[:1], "bench")
            started = time.perf_counter()
            outputs = engine.evaluate(key_sha256, lambda: evaluation_keys, ciphertexts, "bench")
            seconds = time.perf_counter() - started
        finally:
            engine.close()
        scores = np.stack([client.deserialize_decrypt_dequantize(out)[0] for out in outputs])
    return {
        "seconds_per_sample": seconds / len(x),
        "predicted": scores.argmax(axis=1),
        "evaluation_key_bytes": len(evaluation_keys),
        "input_bytes_per_sample": float(np.mean([len(c) for c in ciphertexts])),
        "output_bytes_per_sample": float(np.mean([len(o) for o in outputs])),
    }


def bench_one(
    dataset: str, recipe: str, settings: TrainingSettings, splits: Path, fhe_samples: int, pace: Pace
) -> dict[str, Any]:
    from concrete.ml.common.serialization.loaders import loads

    network = settings.model_type == "neural_network"

    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = Path(scratch) / "model"
        with contextlib.redirect_stdout(io.StringIO()):  # the Train step reports in JSON on stdout
            summary = train(settings, splits / "train", splits / "preprocessing", model_dir)
        x_train, _ = load_split(splits / "train", "train")
        x_test, y_test = load_split(splits / "test", "test")
        model = loads((model_dir / artifacts.MODEL_JSON).read_text())
        circuit = settings.compile(model, x_train)  # as Evaluate does: the circuit of server.zip
        clear = model.sklearn_model.predict(x_test) if network else clear_predictions(model, x_test)
        # With p_error > 0 each simulation draws its own bootstrap errors: the mean of several runs.
        simulations = [model.predict(x_test, fhe="simulate") for _ in range(SIMULATIONS)]
        simulated = simulations[0]
        sample = x_test[:fhe_samples]
        served = serve_shard(model_dir, sample, cores)
        accumulator = int(circuit.graph.maximum_integer_bit_width())
        bootstrap = None  # the floor is a network's: its activations are the bootstraps measured alone
        if network:
            removed, method = activation_rounding(model)
            bootstrap = activation_layer_seconds_on_one_core(
                accumulator, removed, method, settings.effective_p_error or 2.0**-40
            )
        cost = CircuitCost.of(circuit)
    pbs = cost.bootstraps
    floor = pbs * bootstrap["seconds_per_bootstrap"] / cores if bootstrap else None
    result = {
        "dataset": dataset,
        "recipe": recipe,
        "settings": {k: v for k, v in settings.to_dict().items() if k.startswith("module__") or k in _LEVERS},
        "effective_p_error": settings.effective_p_error,
        "levers": {lever: lever_value(settings, lever) for lever in SEARCH_SPACE[settings.model_type]},
        "features": int(x_test.shape[1]),
        "test_rows": len(y_test),
        "accuracy_clear": float((clear == y_test).mean()),
        "accuracy_simulated": float(np.mean([(s == y_test).mean() for s in simulations])),
        "accuracy_simulated_runs": [float((s == y_test).mean()) for s in simulations],
        "fhe_samples": len(sample),
        "accuracy_fhe": float((served["predicted"] == y_test[: len(sample)]).mean()),
        "fhe_agreement_with_simulation": float((served["predicted"] == simulated[: len(sample)]).mean()),
        "programmable_bootstrap_count": pbs,
        "bootstrap_parameters": circuit_parameters(circuit),
        "max_bit_width": accumulator,
        "seconds_per_sample": served["seconds_per_sample"],
        "cores": cores,
        "bootstrap_alone": bootstrap,
        "floor_seconds_per_sample": floor,
        "achieved_over_floor": served["seconds_per_sample"] / floor if floor else None,
        # What the lever search expects of this circuit: one core, so the shard's time times its cores.
        "expected_seconds_per_sample_one_core": pace.seconds(cost),
        "measured_seconds_per_sample_one_core": served["seconds_per_sample"] * cores,
        "complexity": cost.complexity,
        "evaluation_key_bytes": served["evaluation_key_bytes"],
        "input_bytes_per_sample": served["input_bytes_per_sample"],
        "output_bytes_per_sample": served["output_bytes_per_sample"],
        "compile_seconds": summary["compile_seconds"],
    }
    return result


_LEVERS = (
    "model_type",
    "n_bits",
    "max_depth",
    "rounding",
    "p_error",
    "compress_evaluation_keys",
    "compress_input_ciphertexts",
    "max_epochs",
    "lr",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default="digits,digits_28x28", help="comma-separated bundled data sets")
    parser.add_argument(
        "--recipes", default="reference,tuned", help="comma-separated: reference, tuned, searched (the lever search)"
    )
    parser.add_argument(
        "--tree-datasets", default="", help="comma-separated data sets the tree-* recipes run on (only those)"
    )
    parser.add_argument("--accuracy-budget", type=float, default=0.01, help="the search's budget (0.01: one point)")
    parser.add_argument("--search-seconds", type=float, default=1800.0, help="the search's time budget")
    parser.add_argument("--fhe-samples", type=int, default=20, help="test rows run in real FHE per recipe")
    parser.add_argument(
        "--reference-fhe-samples-784",
        type=int,
        default=2,
        help="real-FHE rows for the reference on 784 features (minutes per row on 2 cores)",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME:LEVER=VALUE,...",
        help="also run the tuned recipe with these hyperparameters changed (repeatable), "
        "e.g. prune50:module__n_prune_neurons_percentage=0.5",
    )
    parser.add_argument("--name", default="recipe", help="results file name, without .json")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    # As the serving container runs (containers/inference/__main__.py): one thread per sample, one sample
    # per core. Set before Concrete's runtime is loaded.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    args.out.mkdir(parents=True, exist_ok=True)
    recipes = {name: RECIPES[name] for name in args.recipes.split(",") if name}
    recipes.update(variant(spec) for spec in args.variant)
    command = (
        "python bench/recipe.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k not in ("out", "variant"))
        + "".join(f" --variant {spec}" for spec in args.variant)
    )
    results = []
    header = (
        f"{'data set':<14}{'recipe':<11}{'clear':>7}{'sim':>7}{'FHE':>9}{'PBS':>6}{'s/sample':>10}{'floor':>8}"
        f"{'/floor':>8}{'key MB':>8}{'in kB':>7}{'out kB':>8}"
    )
    print(header, flush=True)
    networks, trees = [d for d in args.datasets.split(",") if d], [d for d in args.tree_datasets.split(",") if d]
    pace = measure_pace()  # what the search prices circuits with, for the expected seconds of every row
    with tempfile.TemporaryDirectory() as scratch:
        for dataset in dict.fromkeys(networks + trees):
            root = Path(scratch) / dataset
            source = builtin_dataset_csv(dataset, root / "in" / f"{dataset}.csv")
            with contextlib.redirect_stdout(io.StringIO()):
                preprocess(source.parent, root / "splits", "label", 0.25, 42)
            for recipe, settings in recipes.items():
                if dataset not in (trees if recipe.startswith("tree-") else networks):
                    continue
                samples = args.fhe_samples
                if recipe == "reference" and dataset == "digits_28x28":
                    samples = args.reference_fhe_samples_784
                searched = None
                if recipe.endswith("searched"):
                    x, y = load_split(root / "splits" / "train", "train")
                    options = SearchSettings(accuracy_budget=args.accuracy_budget, seconds=args.search_seconds)
                    searched = search(settings, frozenset(), x, y, options)
                    settings = chosen_settings(settings, searched)
                r = bench_one(dataset, recipe, settings, root / "splits", samples, pace)
                r["search"] = searched.to_dict() if searched else None
                results.append(r)
                print(
                    f"{dataset:<14}{recipe:<11}{r['accuracy_clear']:>7.3f}{r['accuracy_simulated']:>7.3f}"
                    f"{r['accuracy_fhe']:>6.2f}/{r['fhe_samples']:<2}{r['programmable_bootstrap_count']:>6}"
                    f"{r['seconds_per_sample']:>10.3f}{r['floor_seconds_per_sample'] or 0:>8.3f}"
                    f"{r['achieved_over_floor'] or 0:>8.2f}{r['evaluation_key_bytes'] / 1e6:>8.1f}"
                    f"{r['input_bytes_per_sample'] / 1e3:>7.1f}{r['output_bytes_per_sample'] / 1e3:>8.1f}",
                    flush=True,
                )
    record = {
        "command": command,
        "machine": {"cores": os.cpu_count(), "processor": platform.processor() or platform.machine()},
        "results": results,
    }
    (args.out / f"{args.name}.json").write_text(json.dumps(record, indent=2, default=str))
    print(f"wrote {args.out / f'{args.name}.json'}")


if __name__ == "__main__":
    main()
