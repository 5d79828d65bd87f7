"""The lever search of the Train step: the cheapest FHE circuit whose simulated accuracy on a validation split
stays within ML ops' accuracy budget of the float model.

- **Candidates** are the model type's lever values (``SEARCH_SPACE``); a lever ML ops set is pinned and never
  changes. A network is trained once per set of training levers and compiled once per rounding and ``p_error``.
- **Accuracy**: each candidate is fitted on the training split less a held-out validation split and simulated
  in FHE on that validation split (the mean of several draws when bootstrap errors are allowed). The test split
  is Evaluate's and never seen here. The float model is the given levers' clear model, as Evaluate defines it
  (``clear_predictions``); a candidate is within budget when it loses at most ``accuracy_budget`` against it.
- **Cost** comes from the compiled circuit alone: the optimizer's complexity of its bootstraps and key switches,
  priced in seconds by one measurement of a bootstrap on this machine (``circuit_cost``). No candidate runs in
  real FHE.
- **Search**: greedy descent from the given levers. Each round tries every one-lever change of the current
  candidate and moves to the cheapest one within budget, if it saves at least ``MIN_SAVING`` of the time
  (accuracy is not traded for nothing); it stops when no change saves or the time budget is spent. If the given
  levers are not within budget themselves, the first move is to the cheapest neighbour that is. If nothing
  explored is within budget, the search chooses nothing and the given levers are trained, for CheckQuality to
  judge as before.

Why not SageMaker's tuning (a TuningStep): a tuning job maximizes or minimizes one metric; it has no constraint,
so "cheapest within a budget" would become a penalty whose weight decides the answer, and the budget is relative
to a float model each training job would have to fit again. Each candidate would also be a training job of its
own (a container start, the data loaded again) where here a candidate costs a compile and a simulation, and a
network's roundings and error probabilities reuse one fit. So the search runs inside the Train step.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from containers.contract import StepInputError
from containers.training.circuit_cost import CircuitCost, Pace, measure_pace
from containers.training.models import TrainingSettings, clear_predictions

# The values each lever may take, per model type; the given (or default) value is always a candidate too.
SEARCH_SPACE: dict[str, dict[str, tuple[Any, ...]]] = {
    "logistic_regression": {"n_bits": (8, 7, 6, 5, 4, 3)},
    "decision_tree": {"n_bits": (7, 6, 5, 4, 3, 2), "max_depth": (6, 5, 4, 3, 2)},
    "xgboost": {"n_bits": (6, 5, 4, 3, 2), "max_depth": (5, 4, 3, 2), "n_estimators": (20, 10, 5, 3)},
    "neural_network": {
        "module__n_hidden_neurons_multiplier": (1.0, 0.5, 0.375, 0.25, 0.125),
        "module__n_prune_neurons_percentage": (0.0, 0.25, 0.5, 0.75),
        "module__n_w_bits": (4, 3, 2),
        "module__n_a_bits": (4, 3, 2),
        "rounding": ("approximate", "exact"),
        "p_error": (0.001, 0.01, 0.05, 0.1),
    },
}
# Levers that change the compiled circuit only: a candidate that differs from a fitted one only in these reuses
# its fit.
COMPILE_LEVERS = ("rounding", "p_error")
MIN_SAVING = 0.02  # a move must save at least this share of the expected time
SIMULATIONS_WITH_ERRORS = 3  # draws per candidate whose bootstraps may err (p_error above Concrete's default)
NO_SEARCH = 0.0
# The Train step's hyperparameters that set the search, and the SearchSettings field each sets.
SEARCH_HYPERPARAMETERS = {"accuracy_budget": "accuracy_budget", "search_seconds": "seconds"}


@dataclass(frozen=True)
class SearchSettings:
    accuracy_budget: float = 0.01  # 0.01: one point of accuracy lost against the float model
    seconds: float = 300.0  # time budget; 0: no search, the given levers (or defaults) are trained
    validation_size: float = 0.25  # of the training split
    seed: int = 42

    @classmethod
    def from_hyperparameters(cls, raw: dict[str, str]) -> tuple[SearchSettings, dict[str, str]]:
        """This search's settings, and the hyperparameters left for ``TrainingSettings``."""
        values: dict[str, float] = {}
        rest = {}
        for name, text in raw.items():
            if name in SEARCH_HYPERPARAMETERS:
                try:
                    values[SEARCH_HYPERPARAMETERS[name]] = float(str(text).strip() or "nan")
                except ValueError:
                    raise StepInputError(f"hyperparameter {name}={text!r} is not a number") from None
            else:
                rest[name] = text
        default = cls()
        settings = cls(
            accuracy_budget=values.get("accuracy_budget", default.accuracy_budget),
            seconds=values.get("seconds", default.seconds),
        )
        settings.validate()
        return settings, rest

    def validate(self) -> None:
        if not 0.0 <= self.accuracy_budget < 1.0:  # NaN fails too
            raise StepInputError(
                f"the accuracy budget must be in [0, 1) (0.01 = one point), got {self.accuracy_budget}"
            )
        if not 0.0 <= self.seconds <= 86_400:
            raise StepInputError(f"the search's time budget must be 0 to 86400 seconds, got {self.seconds}")
        if not 0.0 < self.validation_size < 1.0:
            raise StepInputError(f"the validation share must be in (0, 1), got {self.validation_size}")

    @property
    def enabled(self) -> bool:
        return self.seconds > NO_SEARCH


def lever_value(settings: TrainingSettings, lever: str) -> Any:
    """The value a lever has in effect (0 for ``n_bits`` or ``p_error`` means the model type's default)."""
    if lever == "n_bits":
        return settings.effective_n_bits
    if lever == "p_error":
        return settings.effective_p_error
    return getattr(settings, lever)


def searched_levers(settings: TrainingSettings, pinned: frozenset[str]) -> dict[str, tuple[Any, ...]]:
    """The levers the search may change, with the values it tries (the current value included)."""
    space = SEARCH_SPACE.get(settings.model_type, {})
    return {
        lever: tuple(dict.fromkeys((lever_value(settings, lever), *values)))
        for lever, values in space.items()
        if lever not in pinned
    }


@dataclass
class Candidate:
    levers: dict[str, Any]
    validation_accuracy: float
    within_budget: bool
    bootstraps: int
    complexity: float
    parameters: list[dict[str, int]]
    expected_seconds_per_sample: float | None  # on one core; None where no bootstrap asked for a measurement
    seconds_spent: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SearchResult:
    accuracy_budget: float
    time_budget_seconds: float
    float_accuracy: float  # the given levers' clear model on the validation split
    validation_rows: int
    pinned: list[str]
    space: dict[str, list[Any]]
    candidates: list[Candidate] = field(default_factory=list)
    chosen: int | None = None  # index into candidates; None: nothing explored was within budget
    stopped: str = ""
    seconds: float = 0.0
    pace: dict[str, Any] | None = None

    @property
    def chosen_candidate(self) -> Candidate | None:
        return None if self.chosen is None else self.candidates[self.chosen]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["chosen_levers"] = self.chosen_candidate.levers if self.chosen_candidate else None
        return data

    @staticmethod
    def summary(record: dict[str, Any]) -> dict[str, Any]:
        """Of a ``to_dict()`` record, what the evaluation report and the audit repeat: the choice and how it was
        made, not every candidate."""
        chosen = record.get("chosen")
        return {
            "accuracy_budget": record.get("accuracy_budget"),
            "time_budget_seconds": record.get("time_budget_seconds"),
            "float_accuracy": record.get("float_accuracy"),
            "explored": len(record.get("candidates", [])),
            "stopped": record.get("stopped"),
            "seconds": record.get("seconds"),
            "pinned": record.get("pinned", []),
            "chosen": record["candidates"][chosen] if chosen is not None else None,
        }


class _Fits:
    """Fitted models by training levers, so a change of rounding or ``p_error`` compiles without fitting again."""

    def __init__(self, x: npt.NDArray[Any], y: npt.NDArray[Any]) -> None:
        self.x, self.y = x, y
        self.models: dict[tuple[Any, ...], Any] = {}

    def model(self, settings: TrainingSettings) -> Any:
        key = tuple(sorted((k, v) for k, v in settings.to_dict().items() if k not in COMPILE_LEVERS))
        if key not in self.models:
            model = settings.build_model()
            model.fit(self.x, self.y)
            self.models[key] = model
        return self.models[key]


def search(
    given: TrainingSettings,
    pinned: frozenset[str],
    x: npt.NDArray[Any],
    y: npt.NDArray[Any],
    options: SearchSettings,
    progress: Callable[[str], None] = print,
    pace_of: Callable[[], Pace] = measure_pace,
) -> SearchResult:
    """Search the unpinned levers of ``given`` (see the module's docstring). ``x``/``y`` is the training split."""
    from sklearn.model_selection import train_test_split

    started = time.monotonic()
    try:
        x_fit, x_val, y_fit, y_val = train_test_split(
            x, y, test_size=options.validation_size, random_state=options.seed, stratify=y
        )
    except ValueError as error:
        raise StepInputError(
            f"the training split is too small to hold out a validation split for the lever search ({error}); "
            "set SearchSeconds=0 to train the given levers without a search"
        ) from None
    fits = _Fits(x_fit, y_fit)
    space = searched_levers(given, pinned)
    baseline = fits.model(given)
    float_accuracy = float((clear_predictions(baseline, x_val) == y_val).mean())
    result = SearchResult(
        accuracy_budget=options.accuracy_budget,
        time_budget_seconds=options.seconds,
        float_accuracy=float_accuracy,
        validation_rows=len(y_val),
        pinned=sorted(pinned & set(SEARCH_SPACE.get(given.model_type, {}))),
        space={lever: list(values) for lever, values in space.items()},
    )
    pace: list[Pace] = []  # measured once, at the first circuit with bootstraps
    explored: dict[tuple[Any, ...], Candidate] = {}
    progress(
        f"lever search: {given.model_type}, float model {float_accuracy:.4f} on {len(y_val)} validation rows, "
        f"budget {options.accuracy_budget:.4f}, {options.seconds:.0f} s; searching "
        f"{', '.join(space) or 'nothing'}{'; pinned ' + ', '.join(result.pinned) if result.pinned else ''}"
    )

    def levers_of(settings: TrainingSettings) -> dict[str, Any]:
        return {lever: lever_value(settings, lever) for lever in SEARCH_SPACE.get(given.model_type, {})}

    def evaluate(settings: TrainingSettings) -> Candidate:
        key = tuple(levers_of(settings).items())
        if key in explored:
            return explored[key]
        begun = time.monotonic()
        model = fits.model(settings)
        circuit = settings.compile(model, x_fit)
        draws = SIMULATIONS_WITH_ERRORS if settings.effective_p_error > 0 else 1
        accuracy = float(np.mean([(model.predict(x_val, fhe="simulate") == y_val).mean() for _ in range(draws)]))
        cost = CircuitCost.of(circuit)
        if cost.bootstraps and not pace:
            progress("lever search: measuring a bootstrap on one core, to price circuits in seconds")
            pace.append(pace_of())
        candidate = Candidate(
            levers=levers_of(settings),
            validation_accuracy=accuracy,
            within_budget=float_accuracy - accuracy <= options.accuracy_budget + 1e-9,
            bootstraps=cost.bootstraps,
            complexity=cost.complexity,
            parameters=cost.parameters,
            expected_seconds_per_sample=pace[0].seconds(cost) if pace else None,
            seconds_spent=round(time.monotonic() - begun, 2),
        )
        explored[key] = candidate
        result.candidates.append(candidate)
        progress(
            f"lever search: #{len(result.candidates)} {_levers_text(candidate.levers)}: validation "
            f"{accuracy:.4f}{'' if candidate.within_budget else ' (outside the budget)'}, {cost.bootstraps} "
            f"bootstraps, {_seconds_text(candidate.expected_seconds_per_sample)}"
        )
        return candidate

    def out_of_time() -> bool:
        return time.monotonic() - started >= options.seconds

    current_settings, current = given, evaluate(given)
    result.stopped = "no one-lever change saves time within the budget"
    if current.within_budget and current.bootstraps == 0:
        result.stopped = "the circuit has no bootstrap: its time is the run's fixed cost, no lever saves any"
    while result.stopped != "the circuit has no bootstrap: its time is the run's fixed cost, no lever saves any":
        moves: list[tuple[Candidate, TrainingSettings]] = []
        for lever, values in space.items():
            for value in values:
                if value == lever_value(current_settings, lever):
                    continue
                if out_of_time():
                    result.stopped = "time budget spent"
                    break
                neighbour = replace(current_settings, **{lever: value})
                moves.append((evaluate(neighbour), neighbour))
            if result.stopped == "time budget spent":
                break
        better = [
            (candidate, settings)
            for candidate, settings in moves
            if candidate.within_budget and _saves(candidate, current)
        ]
        if not better:
            break
        current, current_settings = min(better, key=lambda m: (_cost(m[0]), -m[0].validation_accuracy))
        if result.stopped == "time budget spent":
            break
    if current.within_budget:
        result.chosen = result.candidates.index(current)
    else:
        result.stopped += "; nothing explored is within the budget: the given levers are trained"
    result.seconds = round(time.monotonic() - started, 1)
    result.pace = pace[0].to_dict() if pace else None
    chosen = result.chosen_candidate
    progress(
        f"lever search: {len(result.candidates)} candidates in {result.seconds:.0f} s ({result.stopped}); chosen: "
        + (
            f"{_levers_text(chosen.levers)}, validation {chosen.validation_accuracy:.4f}, {chosen.bootstraps} "
            f"bootstraps, {_seconds_text(chosen.expected_seconds_per_sample)}"
            if chosen
            else "none"
        )
    )
    return result


def _cost(candidate: Candidate) -> float:
    """Expected seconds where measured; a circuit without bootstraps costs next to nothing."""
    if candidate.expected_seconds_per_sample is not None:
        return candidate.expected_seconds_per_sample
    return 0.0 if candidate.bootstraps == 0 else math.inf


def _saves(candidate: Candidate, current: Candidate) -> bool:
    if not current.within_budget:  # the given levers are outside the budget: any candidate within it will do
        return True
    return _cost(candidate) <= (1 - MIN_SAVING) * _cost(current) and _cost(candidate) < _cost(current)


def chosen_settings(given: TrainingSettings, result: SearchResult) -> TrainingSettings:
    """The given settings with the chosen candidate's levers (the given ones where nothing was chosen)."""
    chosen = result.chosen_candidate
    return replace(given, **chosen.levers) if chosen else given


def _levers_text(levers: dict[str, Any]) -> str:
    return ", ".join(f"{k.removeprefix('module__')}={v}" for k, v in levers.items())


def _seconds_text(seconds: float | None) -> str:
    return "no bootstrap" if seconds is None else f"{seconds:.4f} s per sample on one core"
