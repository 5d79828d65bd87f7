"""The lever search's policy: which candidate to assess next, which to move to, when to stop and what to choose.

Pure: it knows levers, their values, an accuracy and a cost per candidate, and nothing of models or circuits.
``search.py`` gives it a way to assess a candidate (fit, compile, simulate, price); tests give it fakes.

- **Within budget**: a candidate whose accuracy loses at most the budget against the reference (``Budget``).
- **Descent**: from the start (the given levers), each round assesses every one-lever change of the current
  candidate, in the space's order of levers and values, and moves to the cheapest one within budget (ties: the
  more accurate, then the first in that order), if it saves at least ``MIN_SAVING`` of the current cost and some
  of it (accuracy is not traded for nothing). If the start is not within budget, the first move is to the
  cheapest change that is, whatever its cost.
- **Stop**: no change saves (``NO_SAVING``); the time is up, checked before each change is assessed, so the
  candidate in progress finishes and the moves of that round still count (``TIME_SPENT``); or the start is within
  budget and its circuit has no bootstrap, so no lever can save anything (``NO_BOOTSTRAP``).
- **Choice**: the candidate the descent ended on if it is within budget, else none.

Each candidate is assessed once; one seen again in a later round is looked up, not assessed again.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

MIN_SAVING = 0.02  # a move must save at least this share of the current candidate's cost
ACCURACY_TOLERANCE = 1e-9  # a loss equal to the budget, give or take float rounding, is within it

Levers = Mapping[str, Any]  # lever name -> value; a candidate


class Assessed(Protocol):
    """What the policy reads of an assessed candidate."""

    @property
    def accuracy(self) -> float: ...

    @property
    def cost(self) -> float:
        """What the descent minimizes (expected seconds per sample)."""
        ...

    @property
    def bootstraps(self) -> int: ...


Assessment = TypeVar("Assessment", bound=Assessed)


class StopReason(enum.Enum):
    NO_SAVING = "no_saving"
    TIME_SPENT = "time_spent"
    NO_BOOTSTRAP = "no_bootstrap"


# The one place the stop reasons are put in words.
_STOP_TEXT = {
    StopReason.NO_SAVING: "no one-lever change saves time within the budget",
    StopReason.TIME_SPENT: "time budget spent",
    StopReason.NO_BOOTSTRAP: "the circuit has no bootstrap: its time is the run's fixed cost, no lever saves any",
}
_NOTHING_CHOSEN_TEXT = "nothing explored is within the budget: the given levers are trained"


def stop_text(stop: StopReason, *, chose: bool) -> str:
    """Why the search stopped and, when it chose nothing, what happens instead: for people to read."""
    return _STOP_TEXT[stop] if chose else f"{_STOP_TEXT[stop]}; {_NOTHING_CHOSEN_TEXT}"


@dataclass(frozen=True)
class Budget:
    """How much accuracy a candidate may lose against the reference (the float model) and still be chosen."""

    reference_accuracy: float
    accuracy_loss: float

    def admits(self, accuracy: float) -> bool:
        return self.reference_accuracy - accuracy <= self.accuracy_loss + ACCURACY_TOLERANCE


@dataclass(frozen=True)
class Explored(Generic[Assessment]):
    levers: dict[str, Any]
    assessment: Assessment


@dataclass(frozen=True)
class Descent(Generic[Assessment]):
    """Where the descent went: every candidate assessed (in order), the candidates it moved through (indices into
    ``explored``, the start first), the one chosen (an index; None: nothing within budget) and why it stopped."""

    explored: tuple[Explored[Assessment], ...]
    path: tuple[int, ...]
    chosen: int | None
    stop: StopReason

    @property
    def stop_text(self) -> str:
        return stop_text(self.stop, chose=self.chosen is not None)


def descend(
    start: Levers,
    space: Mapping[str, Sequence[Any]],
    assess: Callable[[dict[str, Any]], Assessment],
    budget: Budget,
    out_of_time: Callable[[], bool],
) -> Descent[Assessment]:
    """Descend from ``start`` through one-lever changes drawn from ``space`` (see the module's docstring)."""
    explored: dict[tuple[tuple[str, Any], ...], int] = {}
    order: list[Explored[Assessment]] = []
    path = [_assessed(dict(start), assess, explored, order)]
    if budget.admits(order[0].assessment.accuracy) and order[0].assessment.bootstraps == 0:
        return _ended(order, path, budget, StopReason.NO_BOOTSTRAP)
    while True:
        current = order[path[-1]]
        neighbours, time_spent = _assess_neighbours(current.levers, space, assess, out_of_time, explored, order)
        move = _best_move(current.assessment, [order[i] for i in neighbours], budget)
        if move is not None:
            path.append(neighbours[move])
        if move is None or time_spent:
            return _ended(order, path, budget, StopReason.TIME_SPENT if time_spent else StopReason.NO_SAVING)


def one_lever_changes(levers: Levers, space: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every candidate one lever away from ``levers``, in the space's order of levers and values."""
    return [{**levers, lever: value} for lever, values in space.items() for value in values if value != levers[lever]]


def saves(candidate: Assessed, current: Assessed, current_within_budget: bool) -> bool:
    """Whether moving from ``current`` to ``candidate`` (within budget) is worth it."""
    if not current_within_budget:  # the start is outside the budget: any candidate within it will do
        return True
    return candidate.cost <= (1 - MIN_SAVING) * current.cost and candidate.cost < current.cost


def _assessed(
    levers: dict[str, Any],
    assess: Callable[[dict[str, Any]], Assessment],
    explored: dict[tuple[tuple[str, Any], ...], int],
    order: list[Explored[Assessment]],
) -> int:
    """The index of ``levers`` in ``order``, assessed and appended if it is new."""
    key = tuple(levers.items())
    if key not in explored:
        explored[key] = len(order)
        order.append(Explored(levers, assess(levers)))
    return explored[key]


def _assess_neighbours(
    levers: Levers,
    space: Mapping[str, Sequence[Any]],
    assess: Callable[[dict[str, Any]], Assessment],
    out_of_time: Callable[[], bool],
    explored: dict[tuple[tuple[str, Any], ...], int],
    order: list[Explored[Assessment]],
) -> tuple[list[int], bool]:
    """The one-lever changes of ``levers`` assessed before the time ran out, and whether it did."""
    found: list[int] = []
    for neighbour in one_lever_changes(levers, space):
        if out_of_time():
            return found, True
        found.append(_assessed(neighbour, assess, explored, order))
    return found, False


def _best_move(current: Assessment, neighbours: list[Explored[Assessment]], budget: Budget) -> int | None:
    """Of ``neighbours``, the position of the cheapest within budget that saves enough (ties: the more accurate,
    then the first in ``neighbours``); None when none does."""
    current_within = budget.admits(current.accuracy)
    better = [
        position
        for position, neighbour in enumerate(neighbours)
        if budget.admits(neighbour.assessment.accuracy) and saves(neighbour.assessment, current, current_within)
    ]
    if not better:
        return None
    return min(better, key=lambda p: (neighbours[p].assessment.cost, -neighbours[p].assessment.accuracy))


def _ended(order: list[Explored[Assessment]], path: list[int], budget: Budget, stop: StopReason) -> Descent[Assessment]:
    last = path[-1]
    chosen = last if budget.admits(order[last].assessment.accuracy) else None
    return Descent(explored=tuple(order), path=tuple(path), chosen=chosen, stop=stop)
