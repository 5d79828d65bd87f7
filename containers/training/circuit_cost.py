"""What a compiled FHE circuit is expected to cost per sample, from the circuit itself and one measurement.

A circuit's time is almost all bootstraps. Concrete's optimizer already prices every bootstrap and key switch of
the circuit from its crypto parameters (polynomial size, GLWE dimension, decomposition level, LWE dimension): its
``complexity`` statistic. One measurement turns that price into seconds on this machine: a layer of activations
compiled on its own at two widths and timed on one core gives the seconds per unit of complexity (the slope) and
the cost of a run whatever its size (the intercept). So a candidate's expected seconds come from compiling it,
never from running it in FHE.

The measurement runs in a process of its own with one thread (``OMP_NUM_THREADS=1``), as the serving container
runs each sample: the process that asks has usually loaded Concrete's runtime with every core already.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

WIDTHS = (8, 32)  # activations per layer in the two measured circuits
RUNS = 5


def circuit_parameters(circuit: Any) -> list[dict[str, int]]:
    """Each kind of bootstrap in the circuit: its key parameters and how many the circuit runs."""
    per_parameter = circuit.statistics.get("programmable_bootstrap_count_per_parameter", {})
    return [
        {
            "polynomial_size": key.polynomial_size(),
            "glwe_dimension": key.glwe_dimension(),
            "input_lwe_dimension": key.input_lwe_dimension(),
            "level": key.level(),
            "base_log": key.base_log(),
            "count": count,
        }
        for key, count in per_parameter.items()
    ]


@dataclass(frozen=True)
class CircuitCost:
    """What the circuit costs as compiled: bootstraps, their kinds and the optimizer's price of it all."""

    bootstraps: int
    complexity: float
    parameters: list[dict[str, int]]

    @classmethod
    def of(cls, circuit: Any) -> CircuitCost:
        stats = circuit.statistics
        return cls(
            bootstraps=int(stats.get("programmable_bootstrap_count", 0)),
            complexity=float(stats.get("complexity", 0.0)),
            parameters=circuit_parameters(circuit),
        )


@dataclass(frozen=True)
class Pace:
    """Seconds on one core per unit of the optimizer's complexity, and per run whatever its size."""

    seconds_per_complexity: float
    seconds_per_run: float
    seconds_per_bootstrap: float  # of the measured kind, for the record
    measured: dict[str, Any]

    def seconds(self, cost: CircuitCost) -> float:
        """Expected seconds per sample on one core."""
        return self.seconds_per_run + cost.complexity * self.seconds_per_complexity

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def activation_layer_seconds(
    accumulator_bits: int, removed_bits: int, method: str, p_error: float, widths: tuple[int, int] = WIDTHS
) -> dict[str, Any]:
    """Time a layer of activations (a rounded accumulator into a ReLU) compiled on its own at two widths, in this
    process's threads. The difference over the difference leaves out what a run costs whatever its size."""
    from concrete import fhe

    exactness = fhe.Exactness.APPROXIMATE if method == "approximate" else fhe.Exactness.EXACT
    half = 2 ** (accumulator_bits - 1)

    def relu_of_rounded(value: Any) -> Any:
        return np.maximum(value - half, 0) // 2**removed_bits

    def activation(x: Any) -> Any:
        if removed_bits:
            x = fhe.round_bit_pattern(x, lsbs_to_remove=removed_bits, exactness=exactness, overflow_protection=False)
        return fhe.univariate(relu_of_rounded)(x)

    configuration = fhe.Configuration(p_error=p_error, global_p_error=None)
    rng = np.random.default_rng(0)
    measured = {}
    for width in widths:
        inputs = [rng.integers(0, 2**accumulator_bits, size=width) for _ in range(16)]
        inputs += [np.zeros(width, dtype=np.int64), np.full(width, 2**accumulator_bits - 1)]
        circuit = fhe.Compiler(activation, {"x": "encrypted"}).compile(inputs, configuration)
        circuit.keygen()
        encrypted = circuit.encrypt(inputs[0])
        circuit.run(encrypted)  # first-call costs are not per-run costs
        timings = []
        for _ in range(RUNS):
            started = time.perf_counter()
            circuit.run(encrypted)
            timings.append(time.perf_counter() - started)
        measured[width] = (CircuitCost.of(circuit), statistics.median(timings))
    (small, small_seconds), (large, large_seconds) = measured[widths[0]], measured[widths[1]]
    per_bootstrap = (large_seconds - small_seconds) / (large.bootstraps - small.bootstraps)
    per_complexity = (large_seconds - small_seconds) / (large.complexity - small.complexity)
    return {
        "accumulator_bits": accumulator_bits,
        "removed_bits": removed_bits,
        "rounding": method,
        "p_error": p_error,
        "seconds_per_bootstrap": per_bootstrap,
        "seconds_per_run_whatever_its_size": small_seconds - small.bootstraps * per_bootstrap,
        "seconds_per_complexity": per_complexity,
        "seconds_per_run_by_complexity": small_seconds - small.complexity * per_complexity,
        "bootstraps_per_activation": large.bootstraps // widths[1],
        "parameters": large.parameters,
        "complexity": [small.complexity, large.complexity],
        "seconds": [small_seconds, large_seconds],
    }


def activation_layer_seconds_on_one_core(
    accumulator_bits: int, removed_bits: int, method: str, p_error: float
) -> dict[str, Any]:
    """``activation_layer_seconds`` in a process of its own whose circuits run on one thread."""
    arguments = json.dumps([accumulator_bits, removed_bits, method, p_error])
    answer = subprocess.run(
        [sys.executable, "-m", "containers.training.circuit_cost", arguments],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        check=False,
    )
    if answer.returncode != 0:
        raise RuntimeError(f"the bootstrap measurement failed: {answer.stderr.strip()[-2000:]}")
    result: dict[str, Any] = json.loads(answer.stdout.strip().splitlines()[-1])
    return result


# The kind of bootstrap the pace is measured on: a 7-bit accumulator rounded to 4 bits, as a small network's
# neurons are; other kinds are priced relative to it by the optimizer's complexity.
CALIBRATION = (7, 3, "approximate", 0.05)


def measure_pace() -> Pace:
    measured = activation_layer_seconds_on_one_core(*CALIBRATION)
    return Pace(
        seconds_per_complexity=max(0.0, measured["seconds_per_complexity"]),
        seconds_per_run=max(0.0, measured["seconds_per_run_by_complexity"]),
        seconds_per_bootstrap=measured["seconds_per_bootstrap"],
        measured=measured,
    )


if __name__ == "__main__":  # one measurement, as JSON on the last line (activation_layer_seconds_on_one_core)
    print(json.dumps(activation_layer_seconds(*json.loads(sys.argv[1]))))
