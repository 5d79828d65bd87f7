"""Does the accuracy budget hold on data the search never saw? The lever search repeated over random splits.

    .venv/bin/python -m bench.budget [--datasets digits,digits_28x28,breast_cancer] [--tree-datasets breast_cancer]
        [--splits 10] [--first-split 0] [--accuracy-budget 0.01] [--confidence 0.95] [--search-seconds 90] [--workers 2]

For each data set (networks on ``--datasets``, trees on ``--tree-datasets``) and each of ``--splits`` random
train/test splits (the Preprocess step's own code, a different seed each), the Train step's search runs from the
product's defaults on the training split. Then, on the test split, which nothing in the search saw:

- the float model (the given levers fitted on the whole training split, as Train saves it) against three circuits,
  each fitted on the whole training split as Train fits it: the **certified** choice (what the product trains),
  the choice by the validation split's **point estimate** (the rule before certification: the cheapest candidate
  whose validation accuracy was within the budget) and the **given** levers (today's default);
- each circuit's loss against the float model, row by row and averaged over its simulation draws (as Evaluate
  measures it), and whether it is within the budget;
- each circuit's expected seconds per sample on one core (the search's cost model: the optimizer's complexity at a
  measured bootstrap pace), and the reference recipe's, for the speed-ups;
- the search's time, certification included.

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
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from containers.training import certification
from containers.training.circuit_cost import CircuitCost, Pace, measure_pace
from containers.training.concrete_internals import clear_predictions
from containers.training.data import builtin_dataset_csv
from containers.training.preprocess import preprocess
from containers.training.search import (
    COMPILE_LEVERS,
    SearchSettings,
    chosen_settings,
    levers_of,
    search,
    simulated_draws,
)
from containers.training.train import load_split
from containers.training.training_settings import TrainingSettings

# What each kind of model starts from (the product's defaults) and the reference it is compared with.
KINDS = {
    "network": (
        TrainingSettings(model_type="neural_network"),
        TrainingSettings(
            model_type="neural_network",
            rounding="exact",
            p_error=2.0**-40,
            compress_evaluation_keys=False,
            compress_input_ciphertexts=False,
        ),
    ),
    "tree": (
        TrainingSettings(model_type="decision_tree"),
        TrainingSettings(model_type="decision_tree", n_bits=6, max_depth=5),
    ),
}
TEST_SHARE = 0.25  # as the pipeline's Preprocess step


@dataclass(frozen=True)
class Task:
    dataset: str
    kind: str
    seed: int
    budget: float
    confidence: float
    search_seconds: float
    pace: Pace


def _splits(dataset: str, seed: int, root: Path) -> Path:
    source = builtin_dataset_csv(dataset, root / "in" / f"{dataset}.csv")
    with contextlib.redirect_stdout(io.StringIO()):
        preprocess(source.parent, root / "splits", "label", TEST_SHARE, seed)
    return root / "splits"


class Fits:
    """Models fitted on the whole training split, one per set of training levers (compile levers share a fit, as
    in Train)."""

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:  # type: ignore[type-arg]
        self.x, self.y, self.models = x, y, {}  # type: ignore[var-annotated]

    def model(self, settings: TrainingSettings) -> Any:
        key = tuple(sorted((k, v) for k, v in settings.to_dict().items() if k not in COMPILE_LEVERS))
        if key not in self.models:
            self.models[key] = settings.build_model()
            self.models[key].fit(self.x, self.y)
        return self.models[key]


def _on_test(
    settings: TrainingSettings,
    fits: Fits,
    x_test: np.ndarray,  # type: ignore[type-arg]
    y_test: np.ndarray,  # type: ignore[type-arg]
    float_predictions: np.ndarray,  # type: ignore[type-arg]
    task: Task,
) -> dict[str, Any]:
    """A circuit fitted on the whole training split, as Train fits it, judged on the test split as Evaluate does."""
    model = fits.model(settings)
    cost = CircuitCost.of(settings.compile(model, fits.x))
    draws = simulated_draws(model, settings, x_test)
    losses = certification.paired_losses(y_test, float_predictions, draws)
    lower, upper = certification.interval(losses, task.confidence)
    return {
        "levers": levers_of(settings),
        "accuracy": float(np.mean([(draw == y_test).mean() for draw in draws])),
        "loss": float(losses.mean()),
        "interval": [lower, upper],
        "within_budget": bool(losses.mean() <= task.budget + 1e-9),
        "bootstraps": cost.bootstraps,
        "expected_seconds_per_sample": task.pace.seconds(cost),
    }


def run(task: Task) -> dict[str, Any]:
    """One search on one split, and its choices on the test split."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    given, reference = KINDS[task.kind]
    with tempfile.TemporaryDirectory() as scratch:
        splits = _splits(task.dataset, task.seed, Path(scratch))
        x, y = load_split(splits / "train", "train")
        x_test, y_test = load_split(splits / "test", "test")
    options = SearchSettings(
        accuracy_budget=task.budget, seconds=task.search_seconds, confidence=task.confidence, seed=task.seed
    )
    started = time.monotonic()
    found = search(given, frozenset(), x, y, options, progress=lambda _: None, pace_of=lambda: task.pace)
    search_seconds = time.monotonic() - started
    fits = Fits(x, y)
    float_predictions = clear_predictions(fits.model(given), x_test)
    estimated = found.candidates[found.estimated].levers if found.estimated is not None else {}
    circuits = {
        "certified": chosen_settings(given, found),
        "estimate": replace(given, **estimated),
        "given": given,
        "reference": reference,
    }
    measured: dict[tuple[Any, ...], dict[str, Any]] = {}
    results = {}
    for name, settings in circuits.items():
        key = tuple(sorted(settings.to_dict().items()))
        if key not in measured:
            measured[key] = _on_test(settings, fits, x_test, y_test, float_predictions, task)
        results[name] = measured[key]
    certified = found.certification
    return {
        "dataset": task.dataset,
        "kind": task.kind,
        "seed": task.seed,
        "train_rows": len(y),
        "test_rows": len(y_test),
        "validation_rows": found.validation_rows,
        "certification_rows": certified.rows,
        "explored": len(found.candidates),
        "stopped": found.stopped,
        "certified": found.certified,
        "certified_bound": certified.guaranteed.bound,
        "tested": len(certified.tested),
        "chose_cheaper": found.chosen is not None and found.candidates[found.chosen].cost < found.candidates[0].cost,
        "by_construction": certified.guaranteed.by_construction,
        "float_accuracy": float((float_predictions == y_test).mean()),
        "search_seconds": search_seconds,
        "certification_seconds": certified.seconds,
        "circuits": results,
    }


def summarize(runs: list[dict[str, Any]], budget: float) -> list[dict[str, Any]]:
    """Per data set and kind: how often each circuit stayed within the budget, and the certified choice's speed."""
    rows = []
    groups: dict[tuple[str, str], None] = dict.fromkeys((r["dataset"], r["kind"]) for r in runs)
    for dataset, kind in groups:
        mine = [r for r in runs if (r["dataset"], r["kind"]) == (dataset, kind)]

        def share(circuit: str, runs: list[dict[str, Any]] = mine) -> float:
            return float(np.mean([r["circuits"][circuit]["within_budget"] for r in runs]))

        def speedup(against: str, runs: list[dict[str, Any]] = mine) -> float:
            ratios = [
                r["circuits"][against]["expected_seconds_per_sample"]
                / r["circuits"]["certified"]["expected_seconds_per_sample"]
                for r in runs
            ]
            return float(np.median(ratios))

        rows.append(
            {
                "dataset": dataset,
                "kind": kind,
                "runs": len(mine),
                "budget": budget,
                "within_certified": share("certified"),
                "within_estimate": share("estimate"),
                "within_given": share("given"),
                "chose_cheaper": float(np.mean([r["chose_cheaper"] for r in mine])),
                "certified_bound_median": float(np.median([r["certified_bound"] for r in mine])),
                "certification_rows": int(np.median([r["certification_rows"] for r in mine])),
                "loss_certified_worst": max(r["circuits"]["certified"]["loss"] for r in mine),
                "loss_estimate_worst": max(r["circuits"]["estimate"]["loss"] for r in mine),
                "speedup_vs_reference": speedup("reference"),
                "speedup_vs_given": speedup("given"),
                "estimate_speedup_vs_reference": float(
                    np.median(
                        [
                            r["circuits"]["reference"]["expected_seconds_per_sample"]
                            / r["circuits"]["estimate"]["expected_seconds_per_sample"]
                            for r in mine
                        ]
                    )
                ),
                "search_seconds_median": float(np.median([r["search_seconds"] for r in mine])),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default="digits,digits_28x28,breast_cancer", help="networks on these")
    parser.add_argument("--tree-datasets", default="breast_cancer", help="trees on these")
    parser.add_argument("--splits", type=int, default=10, help="random train/test splits per data set")
    parser.add_argument(
        "--first-split", type=int, default=0, help="the first split's seed: extends an earlier run with new splits"
    )
    parser.add_argument("--accuracy-budget", type=float, default=0.01)
    parser.add_argument("--confidence", type=float, default=0.95)
    parser.add_argument("--search-seconds", type=float, default=90.0, help="the search's time budget per run")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="runs at once, one core each")
    parser.add_argument("--name", default="budget", help="results file name, without .json")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    args.out.mkdir(parents=True, exist_ok=True)
    command = "python -m bench.budget " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k not in ("out", "workers")
    )
    pace = measure_pace()
    tasks = [
        Task(dataset, kind, seed, args.accuracy_budget, args.confidence, args.search_seconds, pace)
        for kind, datasets in (("network", args.datasets), ("tree", args.tree_datasets))
        for dataset in filter(None, datasets.split(","))
        for seed in range(args.first_split, args.first_split + args.splits)
    ]
    started = time.monotonic()
    runs = []
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        for result in pool.map(run, tasks):
            runs.append(result)
            c = result["circuits"]
            print(
                f"{result['dataset']:<14}{result['kind']:<8} split {result['seed']:<3} loss certified "
                f"{c['certified']['loss'] * 100:+.2f} estimate {c['estimate']['loss'] * 100:+.2f} given "
                f"{c['given']['loss'] * 100:+.2f} points; bound {result['certified_bound'] * 100:.2f}; "
                f"{c['certified']['bootstraps']} bootstraps; search {result['search_seconds']:.0f} s",
                flush=True,
            )
    summary = summarize(runs, args.accuracy_budget)
    record = {
        "command": command,
        "machine": {"cores": os.cpu_count(), "processor": platform.processor() or platform.machine()},
        "seconds": time.monotonic() - started,
        "pace": pace.to_dict(),
        "summary": summary,
        "runs": runs,
    }
    (args.out / f"{args.name}.json").write_text(json.dumps(record, indent=2, default=str))
    for row in summary:
        print(json.dumps(row))
    print(f"wrote {args.out / f'{args.name}.json'}")


if __name__ == "__main__":
    main()
