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
- **Search**: ``search_policy``'s greedy descent from the given levers decides which candidates to assess,
  where to move, when to stop (no one-lever change saves enough, or the time budget is spent) and what to
  choose; this module assesses candidates for it. If nothing explored is within budget, the search chooses
  nothing and the given levers are trained, for CheckQuality to judge as before.

Why not SageMaker's tuning (a TuningStep): a tuning job maximizes or minimizes one metric; it has no constraint,
so "cheapest within a budget" would become a penalty whose weight decides the answer, and the budget is relative
to a float model each training job would have to fit again. Each candidate would also be a training job of its
own (a container start, the data loaded again) where here a candidate costs a compile and a simulation, and a
network's roundings and error probabilities reuse one fit. So the search runs inside the Train step.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from containers.contract import StepInputError
from containers.training.circuit_cost import CircuitCost, Pace, measure_pace
from containers.training.concrete_internals import clear_predictions
from containers.training.search_policy import Budget, StopReason, descend, stop_text
from containers.training.training_settings import TrainingSettings

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


def levers_of(settings: TrainingSettings) -> dict[str, Any]:
    """The values in effect of every lever of the model type's search space, pinned ones included."""
    return {lever: lever_value(settings, lever) for lever in SEARCH_SPACE.get(settings.model_type, {})}


def settings_for(given: TrainingSettings, levers: Mapping[str, Any]) -> TrainingSettings:
    """The given settings with the levers whose values differ from those the given ones have in effect."""
    changed = {lever: value for lever, value in levers.items() if value != lever_value(given, lever)}
    return replace(given, **changed)


@dataclass(frozen=True)
class Candidate:
    """One assessed candidate, as ``training.json`` records it."""

    levers: dict[str, Any]
    validation_accuracy: float
    within_budget: bool
    bootstraps: int
    complexity: float
    parameters: list[dict[str, int]]
    expected_seconds_per_sample: float | None  # on one core; None where no bootstrap asked for a measurement
    seconds_spent: float

    @property
    def accuracy(self) -> float:
        return self.validation_accuracy

    @property
    def cost(self) -> float:
        """Expected seconds where measured; a circuit without bootstraps costs next to nothing."""
        if self.expected_seconds_per_sample is not None:
            return self.expected_seconds_per_sample
        return 0.0 if self.bootstraps == 0 else math.inf

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SearchResult:
    accuracy_budget: float
    time_budget_seconds: float
    float_accuracy: float  # the given levers' clear model on the validation split
    validation_rows: int
    pinned: list[str]
    space: dict[str, list[Any]]
    candidates: list[Candidate]  # in the order they were assessed
    path: list[int]  # the candidates the descent moved through (indices), the given levers first
    chosen: int | None  # index into candidates; None: nothing explored was within budget
    stop: StopReason
    seconds: float
    pace: dict[str, Any] | None

    @property
    def chosen_candidate(self) -> Candidate | None:
        return None if self.chosen is None else self.candidates[self.chosen]

    @property
    def stopped(self) -> str:
        """Why it stopped, in words."""
        return stop_text(self.stop, chose=self.chosen is not None)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["stop_reason"] = data.pop("stop").value
        data["stopped"] = self.stopped
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
            "stop_reason": record.get("stop_reason"),
            "stopped": record.get("stopped"),
            "seconds": record.get("seconds"),
            "pinned": record.get("pinned", []),
            "chosen": record["candidates"][chosen] if chosen is not None else None,
        }


@dataclass(frozen=True)
class ValidationSplit:
    """The training split less a held-out validation split (what candidates are fitted on), and that split."""

    x_fit: npt.NDArray[Any]
    y_fit: npt.NDArray[Any]
    x_val: npt.NDArray[Any]
    y_val: npt.NDArray[Any]

    @classmethod
    def hold_out(cls, x: npt.NDArray[Any], y: npt.NDArray[Any], options: SearchSettings) -> ValidationSplit:
        from sklearn.model_selection import train_test_split

        try:
            x_fit, x_val, y_fit, y_val = train_test_split(
                x, y, test_size=options.validation_size, random_state=options.seed, stratify=y
            )
        except ValueError as error:
            raise StepInputError(
                f"the training split is too small to hold out a validation split for the lever search ({error}); "
                "set SearchSeconds=0 to train the given levers without a search"
            ) from None
        return cls(x_fit=x_fit, y_fit=y_fit, x_val=x_val, y_val=y_val)


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


class CandidateAssessor:
    """Assesses candidates for the policy: fits (reused across compile-only levers), compiles, simulates on the
    validation split and prices the circuit, measuring the pace of a bootstrap at the first circuit that has one."""

    def __init__(
        self,
        given: TrainingSettings,
        split: ValidationSplit,
        fits: _Fits,
        budget: Budget,
        progress: Callable[[str], None],
        pace_of: Callable[[], Pace],
    ) -> None:
        self.given, self.split, self.fits, self.budget = given, split, fits, budget
        self.progress, self.pace_of = progress, pace_of
        self.pace: Pace | None = None
        self.assessed = 0

    def __call__(self, levers: dict[str, Any]) -> Candidate:
        begun = time.monotonic()
        settings = settings_for(self.given, levers)
        model = self.fits.model(settings)
        cost = CircuitCost.of(settings.compile(model, self.split.x_fit))
        accuracy = self.simulated_accuracy(model, settings)
        pace = self.pace_for(cost)
        candidate = Candidate(
            levers=dict(levers),
            validation_accuracy=accuracy,
            within_budget=self.budget.admits(accuracy),
            bootstraps=cost.bootstraps,
            complexity=cost.complexity,
            parameters=cost.parameters,
            expected_seconds_per_sample=pace.seconds(cost) if pace else None,
            seconds_spent=round(time.monotonic() - begun, 2),
        )
        self.assessed += 1
        self.progress(
            f"lever search: #{self.assessed} {_levers_text(candidate.levers)}: validation "
            f"{accuracy:.4f}{'' if candidate.within_budget else ' (outside the budget)'}, {cost.bootstraps} "
            f"bootstraps, {_seconds_text(candidate.expected_seconds_per_sample)}"
        )
        return candidate

    def simulated_accuracy(self, model: Any, settings: TrainingSettings) -> float:
        """On the validation split, in FHE simulation; the mean of several draws where bootstraps may err."""
        draws = SIMULATIONS_WITH_ERRORS if settings.effective_p_error > 0 else 1
        x_val, y_val = self.split.x_val, self.split.y_val
        return float(np.mean([(model.predict(x_val, fhe="simulate") == y_val).mean() for _ in range(draws)]))

    def pace_for(self, cost: CircuitCost) -> Pace | None:
        """The measured pace, measured now if this is the first circuit with bootstraps."""
        if cost.bootstraps and self.pace is None:
            self.progress("lever search: measuring a bootstrap on one core, to price circuits in seconds")
            self.pace = self.pace_of()
        return self.pace


@dataclass(frozen=True)
class Deadline:
    started: float
    seconds: float
    clock: Callable[[], float] = time.monotonic

    def passed(self) -> bool:
        return self.clock() - self.started >= self.seconds


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
    deadline = Deadline(time.monotonic(), options.seconds)
    split = ValidationSplit.hold_out(x, y, options)
    fits = _Fits(split.x_fit, split.y_fit)
    space = searched_levers(given, pinned)
    float_accuracy = float((clear_predictions(fits.model(given), split.x_val) == split.y_val).mean())
    budget = Budget(reference_accuracy=float_accuracy, accuracy_loss=options.accuracy_budget)
    shown_pinned = sorted(pinned & set(SEARCH_SPACE.get(given.model_type, {})))
    progress(
        f"lever search: {given.model_type}, float model {float_accuracy:.4f} on {len(split.y_val)} validation rows, "
        f"budget {options.accuracy_budget:.4f}, {options.seconds:.0f} s; searching "
        f"{', '.join(space) or 'nothing'}{'; pinned ' + ', '.join(shown_pinned) if shown_pinned else ''}"
    )
    assessor = CandidateAssessor(given, split, fits, budget, progress, pace_of)
    descent = descend(levers_of(given), space, assessor, budget, deadline.passed)
    result = SearchResult(
        accuracy_budget=options.accuracy_budget,
        time_budget_seconds=options.seconds,
        float_accuracy=float_accuracy,
        validation_rows=len(split.y_val),
        pinned=shown_pinned,
        space={lever: list(values) for lever, values in space.items()},
        candidates=[explored.assessment for explored in descent.explored],
        path=list(descent.path),
        chosen=descent.chosen,
        stop=descent.stop,
        seconds=round(time.monotonic() - deadline.started, 1),
        pace=assessor.pace.to_dict() if assessor.pace else None,
    )
    progress(_conclusion(result))
    return result


def chosen_settings(given: TrainingSettings, result: SearchResult) -> TrainingSettings:
    """The given settings with the chosen candidate's levers (the given ones where nothing was chosen)."""
    chosen = result.chosen_candidate
    return replace(given, **chosen.levers) if chosen else given


def _conclusion(result: SearchResult) -> str:
    chosen = result.chosen_candidate
    return (
        f"lever search: {len(result.candidates)} candidates in {result.seconds:.0f} s ({result.stopped}); chosen: "
        + (
            f"{_levers_text(chosen.levers)}, validation {chosen.validation_accuracy:.4f}, {chosen.bootstraps} "
            f"bootstraps, {_seconds_text(chosen.expected_seconds_per_sample)}"
            if chosen
            else "none"
        )
    )


def _levers_text(levers: Mapping[str, Any]) -> str:
    return ", ".join(f"{k.removeprefix('module__')}={v}" for k, v in levers.items())


def _seconds_text(seconds: float | None) -> str:
    return "no bootstrap" if seconds is None else f"{seconds:.4f} s per sample on one core"
