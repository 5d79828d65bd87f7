"""The lever search of the Train step: the cheapest FHE circuit whose simulated accuracy on a validation split
stays within ML ops' accuracy budget of the float model.

- **Candidates** are the model type's lever values (``SEARCH_SPACE``); a lever ML ops set is pinned and never
  changes. A network is trained once per set of training levers and compiled once per rounding and ``p_error``.
- **Accuracy**: the training split is cut three ways (stratified): candidates are fitted on the first, assessed on
  the second (the validation split: simulated in FHE there, the mean of several draws when bootstrap errors are
  allowed) and certified on the third, which the search never sees. The test split is Evaluate's and never seen
  here. The float model is the given levers' clear model, as Evaluate defines it (``clear_predictions``); a
  candidate is within budget on the validation split when its point estimate loses at most ``accuracy_budget``
  against it.
- **Cost** comes from the compiled circuit alone: the optimizer's complexity of its bootstraps and key switches,
  priced in seconds by one measurement of a bootstrap on this machine (``circuit_cost``). No candidate runs in
  real FHE.
- **Search**: ``search_policy``'s greedy descent from the given levers decides which candidates to assess,
  where to move and when to stop (no one-lever change saves enough, or the time budget is spent), all on the
  validation split.
- **Certification** (``certification``): the cheapest of dozens of candidates judged on one small split is the
  one whose estimate was luckiest, so the validation split cannot promise the budget. The candidates within it
  that no other beats on both cost and validation bound are tested in a fixed order (the likeliest to certify
  first) on the certification rows, each bounded with confidence ``confidence``, until one fails; the cheapest
  certified one is chosen. A network's **exact circuit** (the given levers compiled with exact rounding and
  bootstraps all but never wrong, where ML ops pinned neither) computes the float model itself: its loss is at most
  its global error probability whatever the rows, so it is certified by construction (checked: it must agree with
  the float model on every certification row) and is chosen when nothing cheaper certifies. Otherwise, if none
  certifies, nothing is chosen and the given levers are trained. Either way the record says what the rows can
  guarantee for the given levers and how many rows the budget would need.

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
from containers.training import certification
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
# The compile levers that make a model type's circuit compute its float model itself (``clear_predictions``): a
# network's float model is its quantized clear model, which exact rounding reproduces bit for bit unless a
# bootstrap errs (2^-40 each: Concrete's own default).
EXACT_LEVERS: dict[str, dict[str, Any]] = {"neural_network": {"rounding": "exact", "p_error": 2.0**-40}}
SIMULATIONS_WITH_ERRORS = 3  # draws per candidate whose bootstraps may err (p_error above Concrete's default)
NO_SEARCH = 0.0
# The Train step's hyperparameters that set the search, and the SearchSettings field each sets.
SEARCH_HYPERPARAMETERS = {
    "accuracy_budget": "accuracy_budget",
    "budget_confidence": "confidence",
    "search_seconds": "seconds",
}


@dataclass(frozen=True)
class SearchSettings:
    accuracy_budget: float = 0.01  # 0.01: one point of accuracy lost against the float model
    seconds: float = 300.0  # time budget; 0: no search, the given levers (or defaults) are trained
    confidence: float = certification.DEFAULT_CONFIDENCE  # 1 - δ: how sure the certified budget is
    # Of the training split: the rows candidates are assessed on, and those the chosen one is certified on. The
    # certification share is the larger: a budget of b needs at least about 4/b rows there (``certification``).
    validation_size: float = 0.2
    certification_size: float = 0.3
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
            confidence=values.get("confidence", default.confidence),
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
        if not 0.5 <= self.confidence < 1.0:  # NaN fails too
            raise StepInputError(
                f"the budget's confidence must be in [0.5, 1) (0.95: the budget holds with 95% confidence), got "
                f"{self.confidence}"
            )
        if not (self.validation_size > 0.0 and self.certification_size > 0.0 and self.held_out < 1.0):
            raise StepInputError(
                f"the validation ({self.validation_size}) and certification ({self.certification_size}) shares "
                "must be positive and leave rows to fit on"
            )

    @property
    def held_out(self) -> float:
        """The share of the training split the candidates are not fitted on."""
        return self.validation_size + self.certification_size

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


def exact_levers(given: TrainingSettings, pinned: frozenset[str]) -> dict[str, Any] | None:
    """The levers of the circuit that computes the given levers' float model, where the model type has one and ML
    ops pinned none of its compile levers."""
    exact = EXACT_LEVERS.get(given.model_type)
    if exact is None or pinned & set(exact):
        return None
    return {**levers_of(given), **exact}


def same_fit(one: TrainingSettings, other: TrainingSettings) -> bool:
    """Whether two settings fit the same model (they differ at most in how it is compiled)."""
    return all(value == getattr(other, name) for name, value in one.to_dict().items() if name not in COMPILE_LEVERS)


def settings_for(given: TrainingSettings, levers: Mapping[str, Any]) -> TrainingSettings:
    """The given settings with the levers whose values differ from those the given ones have in effect."""
    changed = {lever: value for lever, value in levers.items() if value != lever_value(given, lever)}
    return replace(given, **changed)


@dataclass(frozen=True)
class Candidate:
    """One assessed candidate, as ``training.json`` records it."""

    levers: dict[str, Any]
    validation_accuracy: float
    within_budget: bool  # its point estimate on the validation split
    validation_bound: float  # the loss the validation split bounds at the confidence: what orders certification
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
class CertifiedLoss:
    """A candidate's loss against the float model on the certification rows: the point estimate and the bound that
    holds with the confidence, and whether that bound is within the budget."""

    candidate: int
    loss: float
    bound: float
    certified: bool
    rows_needed: int | None  # about how many rows like these would certify the budget; None: no number would
    # The bound is the circuit's global error probability: it computes the float model itself (EXACT_LEVERS), which
    # it was seen to do on every certification row.
    by_construction: bool = False


@dataclass(frozen=True)
class Certification:
    """What the certification rows showed: each candidate tested, in the order tested (the last one failed unless
    all certified), the given levers' own bound, and the choice."""

    confidence: float
    rows: int
    tested: list[CertifiedLoss]
    given: CertifiedLoss
    exact: CertifiedLoss | None  # the float model's own circuit, where the model type has one
    chosen: int | None  # the cheapest certified candidate; None: the given levers are kept
    seconds: float

    @property
    def guaranteed(self) -> CertifiedLoss:
        """What is certified for the circuit trained: the chosen one's bound, or the given levers'."""
        if self.chosen is not None:
            return next(t for t in [*self.tested, *([self.exact] if self.exact else [])] if t.candidate == self.chosen)
        return self.given


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
    estimated: int | None  # where the descent ended, if within budget on the validation split's point estimate
    stop: StopReason
    certification: Certification
    seconds: float
    pace: dict[str, Any] | None

    @property
    def chosen(self) -> int | None:
        """The cheapest candidate certified within the budget (index into candidates); None: the given levers."""
        return self.certification.chosen

    @property
    def chosen_candidate(self) -> Candidate | None:
        return None if self.chosen is None else self.candidates[self.chosen]

    @property
    def stopped(self) -> str:
        """Why the descent stopped, in words."""
        return stop_text(self.stop, chose=self.estimated is not None)

    @property
    def certified(self) -> str:
        """What the certification rows guarantee for the circuit trained, in words."""
        return certified_text(self.accuracy_budget, self.certification, self.candidates)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["stop_reason"] = data.pop("stop").value
        data["stopped"] = self.stopped
        data["chosen"] = self.chosen
        data["chosen_levers"] = self.chosen_candidate.levers if self.chosen_candidate else None
        data["certified"] = self.certified
        return data

    @staticmethod
    def summary(record: dict[str, Any]) -> dict[str, Any]:
        """Of a ``to_dict()`` record, what the evaluation report and the audit repeat: the choice, how it was
        made and what it is certified to lose, not every candidate."""
        chosen = record.get("chosen")
        certified = record.get("certification") or {}
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
            "confidence": certified.get("confidence"),
            "certification_rows": certified.get("rows"),
            "certified_loss": _guaranteed(certified),
            "certified": record.get("certified"),
        }


def _guaranteed(certified: dict[str, Any]) -> dict[str, Any] | None:
    """Of a recorded certification, the trained circuit's certified loss (the chosen one's, else the given's)."""
    if not certified:
        return None
    chosen = certified.get("chosen")
    found = [t for t in [*certified.get("tested", []), certified.get("exact")] if t and t.get("candidate") == chosen]
    return found[0] if chosen is not None and found else certified.get("given")


def certified_text(budget: float, certified: Certification, candidates: list[Candidate]) -> str:
    """The certification's outcome for people: what is guaranteed, on how many rows, and when the budget is below
    what the rows can certify, how many rows it would need."""
    at = f"at {certified.confidence:.0%} confidence on {certified.rows} certification rows"
    given = certified.given
    needed = (
        f"about {given.rows_needed} rows like these would certify them"
        if given.rows_needed is not None
        else f"no number of rows would: they lose {given.loss * 100:.2f} points there"
    )
    in_sequence = any(t.candidate == given.candidate for t in certified.tested)
    given_text = f"the given levers lose at most {given.bound * 100:.2f} points {at}" + (
        f", more than the budget of {budget * 100:.2f} ({needed})"
        if not given.certified
        else ""
        if in_sequence
        # A bound read after the sequence failed is a second test on the same rows: it would spend δ twice.
        else " (reported only: the tested sequence stopped before reaching them)"
    )
    kept = certified.guaranteed
    if certified.chosen is not None and kept.by_construction:
        return (
            f"certified by construction: no cheaper candidate certifies ({given_text}), so the float model's exact "
            f"circuit is trained ({_levers_text(candidates[certified.chosen].levers)}): it computes the float "
            f"model itself, wrong only where a bootstrap errs, at most {kept.bound:.1e} of the samples"
        )
    if certified.chosen is not None:
        return (
            f"certified: loses at most {kept.bound * 100:.2f} points against the float model {at} (budget "
            f"{budget * 100:.2f}; {_levers_text(candidates[certified.chosen].levers)})"
        )
    tested = f"{len(certified.tested)} tested" if certified.tested else "none within the budget on validation"
    exact = certified.exact
    exact_text = (
        ""
        if exact is None
        else f"; the exact circuit differs from the float model on some certification rows (it loses "
        f"{exact.loss * 100:.2f} points there, at most {exact.bound * 100:.2f} {at})"
    )
    return f"no candidate certifies within the budget ({tested}): the given levers are kept; {given_text}{exact_text}"


@dataclass(frozen=True)
class SearchSplits:
    """The training split cut three ways: what candidates are fitted on, the validation split they are assessed
    on, and the certification split the search never sees."""

    x_fit: npt.NDArray[Any]
    y_fit: npt.NDArray[Any]
    x_val: npt.NDArray[Any]
    y_val: npt.NDArray[Any]
    x_cert: npt.NDArray[Any]
    y_cert: npt.NDArray[Any]

    @classmethod
    def hold_out(cls, x: npt.NDArray[Any], y: npt.NDArray[Any], options: SearchSettings) -> SearchSplits:
        from sklearn.model_selection import train_test_split

        try:
            x_fit, x_held, y_fit, y_held = train_test_split(
                x, y, test_size=options.held_out, random_state=options.seed, stratify=y
            )
            x_val, x_cert, y_val, y_cert = train_test_split(
                x_held,
                y_held,
                test_size=options.certification_size / options.held_out,
                random_state=options.seed,
                stratify=y_held,
            )
        except ValueError as error:
            raise StepInputError(
                f"the training split is too small to hold out validation and certification splits for the lever "
                f"search ({error}); set SearchSeconds=0 to train the given levers without a search"
            ) from None
        return cls(x_fit=x_fit, y_fit=y_fit, x_val=x_val, y_val=y_val, x_cert=x_cert, y_cert=y_cert)


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


def simulated_draws(model: Any, settings: TrainingSettings, x: npt.NDArray[Any]) -> list[npt.NDArray[Any]]:
    """The compiled model's predictions in FHE simulation: several draws where bootstraps may err."""
    draws = SIMULATIONS_WITH_ERRORS if settings.effective_p_error > 0 else 1
    return [np.asarray(model.predict(x, fhe="simulate")) for _ in range(draws)]


class CandidateAssessor:
    """Assesses candidates for the policy: fits (reused across compile-only levers), compiles, simulates on the
    validation split and prices the circuit, measuring the pace of a bootstrap at the first circuit that has one.
    Certifies them on the certification split when asked."""

    def __init__(
        self,
        given: TrainingSettings,
        split: SearchSplits,
        fits: _Fits,
        budget: Budget,
        options: SearchSettings,
        progress: Callable[[str], None],
        pace_of: Callable[[], Pace],
    ) -> None:
        self.given, self.split, self.fits, self.budget, self.options = given, split, fits, budget, options
        self.progress, self.pace_of = progress, pace_of
        self.pace: Pace | None = None
        self.assessed = 0
        reference = fits.model(given)
        self.float_validation = clear_predictions(reference, split.x_val)
        self.float_certification = clear_predictions(reference, split.x_cert)

    def __call__(self, levers: dict[str, Any]) -> Candidate:
        begun = time.monotonic()
        settings = settings_for(self.given, levers)
        model = self.fits.model(settings)
        cost = CircuitCost.of(settings.compile(model, self.split.x_fit))
        draws = simulated_draws(model, settings, self.split.x_val)
        losses = certification.paired_losses(self.split.y_val, self.float_validation, draws)
        accuracy = float(np.mean([(draw == self.split.y_val).mean() for draw in draws]))
        pace = self.pace_for(cost)
        candidate = Candidate(
            levers=dict(levers),
            validation_accuracy=accuracy,
            within_budget=self.budget.admits(accuracy),
            validation_bound=round(certification.upper_bound(losses, self.options.confidence), 6),
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

    def certify(self, index: int, levers: dict[str, Any]) -> CertifiedLoss:
        """The candidate's loss on the certification split, bounded at the confidence."""
        settings = settings_for(self.given, levers)
        model = self.fits.model(settings)
        settings.compile(model, self.split.x_fit)  # the fit may be shared: compile this candidate's circuit again
        draws = simulated_draws(model, settings, self.split.x_cert)
        losses = certification.paired_losses(self.split.y_cert, self.float_certification, draws)
        confidence, budget = self.options.confidence, self.options.accuracy_budget
        tested = CertifiedLoss(
            candidate=index,
            loss=round(float(losses.mean()), 6),
            bound=round(certification.upper_bound(losses, confidence), 6),
            certified=certification.certifies(losses, budget, confidence),
            rows_needed=certification.rows_needed(losses, budget, confidence),
        )
        self.progress(
            f"lever search: certifying {_levers_text(levers)}: loses {tested.loss * 100:.2f} points on "
            f"{len(losses)} certification rows, at most {tested.bound * 100:.2f} at {confidence:.0%}: "
            + ("certified" if tested.certified else "not certified")
        )
        return tested

    def certify_exact(self, index: int, levers: dict[str, Any]) -> CertifiedLoss:
        """The exact circuit's certificate: its global error probability, if it computes the float model on every
        certification row (else the rows' bound, as any candidate's)."""
        settings = settings_for(self.given, levers)
        model = self.fits.model(settings)
        circuit = settings.compile(model, self.split.x_fit)
        error = float(circuit.statistics.get("global_p_error", 1.0))
        draws = simulated_draws(model, settings, self.split.x_cert)
        agrees = all(np.array_equal(draw, self.float_certification) for draw in draws)
        losses = certification.paired_losses(self.split.y_cert, self.float_certification, draws)
        if not agrees:
            self.progress("lever search: the exact circuit disagrees with the float model: bounded on the rows")
            return replace(self.certify(index, levers), by_construction=False)
        budget = self.options.accuracy_budget
        self.progress(f"lever search: the exact circuit computes the float model (global error {error:.1e})")
        return CertifiedLoss(index, float(losses.mean()), error, error <= budget, None, by_construction=True)

    def pace_for(self, cost: CircuitCost) -> Pace | None:
        """The measured pace, measured now if this is the first circuit with bootstraps."""
        if cost.bootstraps and self.pace is None:
            self.progress("lever search: measuring a bootstrap on one core, to price circuits in seconds")
            self.pace = self.pace_of()
        return self.pace


def certify(candidates: list[Candidate], assessor: CandidateAssessor, exact: int | None) -> Certification:
    """Test the candidates within the budget on the validation split that no other beats on both cost and
    validation bound, the likeliest first, until one fails (``certification.certify_in_order``); choose the
    cheapest certified, the exact circuit (index ``exact``; None: none) among them. The given levers (the first
    candidate) are bounded too: what the rows can guarantee for them."""
    begun = time.monotonic()
    contenders = [
        certification.Contender(index, candidate.cost, candidate.validation_bound)
        for index, candidate in enumerate(candidates)
        if candidate.within_budget and math.isfinite(candidate.cost)
    ]
    results: dict[int, CertifiedLoss] = {}

    def test(index: int) -> certification.Verdict:
        results[index] = assessor.certify(index, candidates[index].levers)
        return certification.Verdict(index, results[index].bound, results[index].certified)

    contenders = [c for c in contenders if c.index != exact]  # certified apart, without spending the rows
    tested = certification.certify_in_order(certification.pareto_order(contenders), test)
    certified = [t.index for t in tested if t.certified]
    given = results[0] if 0 in results else assessor.certify(0, candidates[0].levers)
    exact_loss = None
    if exact is not None:
        exact_loss = assessor.certify_exact(exact, candidates[exact].levers)
        results[exact] = exact_loss
        if exact_loss.certified:
            certified.append(exact)
    chosen = min(certified, key=lambda i: (candidates[i].cost, results[i].bound, i)) if certified else None
    return Certification(
        confidence=assessor.options.confidence,
        rows=len(assessor.split.y_cert),
        tested=[results[t.index] for t in tested],
        given=given,
        exact=exact_loss,
        chosen=chosen,
        seconds=round(time.monotonic() - begun, 1),
    )


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
    """Search the unpinned levers of ``given`` and certify the choice (see the module's docstring). ``x``/``y``
    is the training split."""
    deadline = Deadline(time.monotonic(), options.seconds)
    split = SearchSplits.hold_out(x, y, options)
    fits = _Fits(split.x_fit, split.y_fit)
    space = searched_levers(given, pinned)
    float_accuracy = float((clear_predictions(fits.model(given), split.x_val) == split.y_val).mean())
    budget = Budget(reference_accuracy=float_accuracy, accuracy_loss=options.accuracy_budget)
    shown_pinned = sorted(pinned & set(SEARCH_SPACE.get(given.model_type, {})))
    progress(
        f"lever search: {given.model_type}, float model {float_accuracy:.4f} on {len(split.y_val)} validation rows, "
        f"budget {options.accuracy_budget:.4f} certified at {options.confidence:.0%} on {len(split.y_cert)} rows, "
        f"{options.seconds:.0f} s; searching {', '.join(space) or 'nothing'}"
        f"{'; pinned ' + ', '.join(shown_pinned) if shown_pinned else ''}"
    )
    assessor = CandidateAssessor(given, split, fits, budget, options, progress, pace_of)
    descent = descend(levers_of(given), space, assessor, budget, deadline.passed)
    candidates = [explored.assessment for explored in descent.explored]
    exact = exact_levers(given, pinned)
    exact_index = None
    if exact is not None:
        seen = [i for i, c in enumerate(candidates) if c.levers == exact]
        exact_index = seen[0] if seen else len(candidates)
        if not seen:
            candidates.append(assessor(exact))
    result = SearchResult(
        accuracy_budget=options.accuracy_budget,
        time_budget_seconds=options.seconds,
        float_accuracy=float_accuracy,
        validation_rows=len(split.y_val),
        pinned=shown_pinned,
        space={lever: list(values) for lever, values in space.items()},
        candidates=candidates,
        path=list(descent.path),
        estimated=descent.chosen,
        stop=descent.stop,
        certification=certify(candidates, assessor, exact_index),
        seconds=round(time.monotonic() - deadline.started, 1),
        pace=assessor.pace.to_dict() if assessor.pace else None,
    )
    progress(_conclusion(result))
    progress(f"lever search: {result.certified}")
    return result


def chosen_settings(given: TrainingSettings, result: SearchResult) -> TrainingSettings:
    """The given settings with the chosen candidate's levers (the given ones where nothing was certified)."""
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
            else "none certified"
        )
    )


def _levers_text(levers: Mapping[str, Any]) -> str:
    return ", ".join(f"{k.removeprefix('module__')}={v}" for k, v in levers.items())


def _seconds_text(seconds: float | None) -> str:
    return "no bootstrap" if seconds is None else f"{seconds:.4f} s per sample on one core"
