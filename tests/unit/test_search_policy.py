"""The lever search's policy on fake candidates: what it assesses, where it moves, why it stops, what it chooses.

Each candidate's accuracy and cost come from a table; nothing is fitted or compiled (the real search, on a real
model, is tests/unit/test_training_steps.py)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from containers.training.search_policy import (
    MIN_SAVING,
    Budget,
    Descent,
    StopReason,
    descend,
    one_lever_changes,
    stop_text,
)

REFERENCE = 0.95  # the float model's accuracy
BUDGET = Budget(reference_accuracy=REFERENCE, accuracy_loss=0.01)


@dataclass(frozen=True)
class Fake:
    accuracy: float
    cost: float
    bootstraps: int = 10


@dataclass
class FakeAssessor:
    """Looks a candidate's assessment up in a table (by the value of each lever, in the start's order) and
    counts the assessments; each one takes a second on its clock."""

    table: Mapping[tuple[Any, ...], Fake]
    default: Fake = Fake(accuracy=0.0, cost=100.0)
    assessed: list[tuple[Any, ...]] = field(default_factory=list)

    def __call__(self, levers: dict[str, Any]) -> Fake:
        key = tuple(levers.values())
        self.assessed.append(key)
        return self.table.get(key, self.default)

    def clock(self) -> float:
        return float(len(self.assessed))


def run(
    start: dict[str, Any],
    space: Mapping[str, Sequence[Any]],
    table: Mapping[tuple[Any, ...], Fake],
    budget: Budget = BUDGET,
    seconds: float = 1000.0,
    default: Fake = Fake(accuracy=0.0, cost=100.0),
) -> tuple[Descent[Fake], FakeAssessor]:
    assessor = FakeAssessor(table, default)
    return descend(start, space, assessor, budget, lambda: assessor.clock() >= seconds), assessor


def levers_of(descent: Descent[Fake], indices: Sequence[int]) -> list[tuple[Any, ...]]:
    return [tuple(descent.explored[i].levers.values()) for i in indices]


def chosen_levers(descent: Descent[Fake]) -> tuple[Any, ...] | None:
    return None if descent.chosen is None else levers_of(descent, [descent.chosen])[0]


# n_bits 8 down to 3: each bit fewer is cheaper; below 5 bits the accuracy falls out of the budget.
BITS = {"n_bits": (8, 7, 6, 5, 4, 3)}
BITS_TABLE = {
    (8,): Fake(0.95, 8.0),
    (7,): Fake(0.95, 7.0),
    (6,): Fake(0.945, 6.0),
    (5,): Fake(0.94, 5.0),  # loses exactly the budget: within it
    (4,): Fake(0.93, 4.0),
    (3,): Fake(0.90, 3.0),
}


def test_it_chooses_the_cheapest_candidate_within_the_budget() -> None:
    descent, assessor = run({"n_bits": 8}, BITS, BITS_TABLE)
    assert chosen_levers(descent) == (5,)
    assert descent.stop is StopReason.NO_SAVING
    assert levers_of(descent, descent.path) == [(8,), (5,)]
    # Every candidate once, though the second round meets the first round's again.
    assert sorted(assessor.assessed) == sorted(BITS_TABLE) and len(assessor.assessed) == len(set(assessor.assessed))
    assert [e.assessment for e in descent.explored] == [BITS_TABLE[key] for key in assessor.assessed]


def test_it_moves_one_lever_per_round_along_the_cheapest_path() -> None:
    space = {"depth": (4, 3, 2), "bits": (6, 5, 4)}
    table = {
        (4, 6): Fake(0.95, 10.0),
        (3, 6): Fake(0.95, 8.0),
        (4, 5): Fake(0.95, 9.0),
        (4, 4): Fake(0.90, 1.0),  # cheapest, but outside the budget
        (2, 6): Fake(0.90, 2.0),  # outside the budget
        (3, 5): Fake(0.95, 6.0),
        (3, 4): Fake(0.95, 7.0),  # dearer than where it is
    }
    descent, assessor = run({"depth": 4, "bits": 6}, space, table)
    assert levers_of(descent, descent.path) == [(4, 6), (3, 6), (3, 5)]
    assert chosen_levers(descent) == (3, 5) and descent.stop is StopReason.NO_SAVING
    # The last round tried every one-lever change of (3, 5): (4, 5) and (3, 6) again from the table of explored.
    assert {(2, 5), (3, 4)} <= set(assessor.assessed) and assessor.assessed.count((4, 5)) == 1


def test_a_change_that_saves_less_than_a_move_must_is_not_taken() -> None:
    just_under = 10.0 * (1 - MIN_SAVING) + 1e-6
    table = {(8,): Fake(0.95, 10.0), (7,): Fake(0.95, just_under), (6,): Fake(0.95, 10.0)}
    descent, _ = run({"n_bits": 8}, {"n_bits": (8, 7, 6)}, table)
    assert chosen_levers(descent) == (8,) and descent.path == (0,)
    assert descent.stop is StopReason.NO_SAVING

    table[(7,)] = Fake(0.95, 10.0 * (1 - MIN_SAVING))  # exactly the share a move must save
    descent, _ = run({"n_bits": 8}, {"n_bits": (8, 7, 6)}, table)
    assert chosen_levers(descent) == (7,)


def test_a_circuit_without_bootstraps_within_the_budget_is_kept_without_searching() -> None:
    table = {(8,): Fake(0.95, 0.0, bootstraps=0), (7,): Fake(0.95, 0.0, bootstraps=0)}
    descent, assessor = run({"n_bits": 8}, {"n_bits": (8, 7)}, table)
    assert descent.stop is StopReason.NO_BOOTSTRAP and assessor.assessed == [(8,)]
    assert chosen_levers(descent) == (8,)


def test_a_circuit_without_bootstraps_outside_the_budget_is_searched_from() -> None:
    table = {(8,): Fake(0.90, 0.0, bootstraps=0), (7,): Fake(0.95, 3.0), (6,): Fake(0.95, 2.0)}
    descent, _ = run({"n_bits": 8}, {"n_bits": (8, 7, 6)}, table)
    assert descent.stop is StopReason.NO_SAVING and chosen_levers(descent) == (6,)


def test_given_levers_outside_the_budget_move_to_the_cheapest_within_it_even_if_dearer() -> None:
    table = {(8,): Fake(0.90, 1.0), (7,): Fake(0.95, 5.0), (6,): Fake(0.95, 4.0), (5,): Fake(0.80, 0.5)}
    descent, _ = run({"n_bits": 8}, {"n_bits": (8, 7, 6, 5)}, table)
    assert levers_of(descent, descent.path) == [(8,), (6,)]
    assert chosen_levers(descent) == (6,) and descent.stop is StopReason.NO_SAVING


def test_nothing_within_the_budget_chooses_nothing_and_says_the_given_levers_are_trained() -> None:
    table = {(8,): Fake(0.90, 8.0), (7,): Fake(0.80, 7.0)}
    descent, assessor = run({"n_bits": 8}, {"n_bits": (8, 7)}, table)
    assert descent.chosen is None and descent.stop is StopReason.NO_SAVING
    assert descent.path == (0,) and assessor.assessed == [(8,), (7,)]
    assert descent.stop_text.endswith("nothing explored is within the budget: the given levers are trained")


def test_a_zero_budget_chooses_nothing_that_loses_accuracy() -> None:
    strict = Budget(reference_accuracy=REFERENCE, accuracy_loss=0.0)
    descent, _ = run({"n_bits": 8}, BITS, BITS_TABLE, budget=strict)
    assert chosen_levers(descent) == (7,)  # the cheapest at the reference's accuracy
    above = {(8,): Fake(0.94, 8.0), (7,): Fake(0.93, 7.0)}
    descent, _ = run({"n_bits": 8}, {"n_bits": (8, 7)}, above, budget=strict)
    assert descent.chosen is None


def test_a_loss_equal_to_the_budget_is_within_it_despite_float_rounding() -> None:
    assert 0.95 - 0.94 > 0.01  # in floats
    assert BUDGET.admits(0.94) and not BUDGET.admits(0.9399)


def test_ties_go_to_the_more_accurate_then_to_the_first_assessed() -> None:
    space: dict[str, tuple[int, ...]] = {"bits": (8, 7, 6, 5)}
    table = {(8,): Fake(0.95, 10.0), (7,): Fake(0.945, 5.0), (6,): Fake(0.95, 5.0), (5,): Fake(0.95, 5.0)}
    descent, _ = run({"bits": 8}, space, table)
    assert chosen_levers(descent) == (6,)  # as cheap as 7 and 5, more accurate than 7, assessed before 5

    space = {"bits": (8, 5, 6)}  # the space's order decides between equals
    descent, _ = run({"bits": 8}, space, table)
    assert chosen_levers(descent) == (5,)


def test_the_time_limit_stops_before_the_next_assessment_and_keeps_that_rounds_moves() -> None:
    # Each assessment takes a second; the start is assessed whatever the limit.
    descent, assessor = run({"n_bits": 8}, BITS, BITS_TABLE, seconds=0.0)
    assert assessor.assessed == [(8,)] and descent.stop is StopReason.TIME_SPENT
    assert chosen_levers(descent) == (8,)

    descent, assessor = run({"n_bits": 8}, BITS, BITS_TABLE, seconds=3.0)
    assert assessor.assessed == [(8,), (7,), (6,)] and descent.stop is StopReason.TIME_SPENT
    assert levers_of(descent, descent.path) == [(8,), (6,)]  # the round's best move, though it was cut short
    assert chosen_levers(descent) == (6,)

    # Time runs out as a round ends: the next round stops at its first change, with what it had.
    descent, assessor = run({"n_bits": 8}, BITS, BITS_TABLE, seconds=len(BITS_TABLE))
    assert descent.stop is StopReason.TIME_SPENT and chosen_levers(descent) == (5,)
    assert len(assessor.assessed) == len(BITS_TABLE)


def test_the_time_limit_with_the_given_levers_outside_the_budget_chooses_nothing() -> None:
    table = {(8,): Fake(0.90, 8.0), (7,): Fake(0.95, 7.0)}
    descent, assessor = run({"n_bits": 8}, {"n_bits": (8, 7)}, table, seconds=1.0)
    assert assessor.assessed == [(8,)] and descent.chosen is None
    assert descent.stop_text == stop_text(StopReason.TIME_SPENT, chose=False)


def test_levers_outside_the_space_never_change() -> None:
    start = {"n_bits": 8, "max_depth": 3}  # max_depth pinned: not in the space
    descent, assessor = run(start, BITS, {(b, 3): fake for (b,), fake in BITS_TABLE.items()})
    assert {key[1] for key in assessor.assessed} == {3}
    assert chosen_levers(descent) == (5, 3)


def test_an_empty_space_keeps_the_given_levers() -> None:
    descent, assessor = run({"n_bits": 8}, {}, {(8,): Fake(0.95, 8.0)})
    assert assessor.assessed == [(8,)] and chosen_levers(descent) == (8,)
    assert descent.stop is StopReason.NO_SAVING


def test_one_lever_changes_leave_out_the_current_value_and_keep_the_spaces_order() -> None:
    changes = one_lever_changes({"a": 1, "b": "x"}, {"a": (2, 1, 3), "b": ("x", "y")})
    assert changes == [{"a": 2, "b": "x"}, {"a": 3, "b": "x"}, {"a": 1, "b": "y"}]


@pytest.mark.parametrize("stop", list(StopReason))
def test_every_stop_reason_is_a_value_with_its_words(stop: StopReason) -> None:
    assert StopReason(stop.value) is stop
    chose, chose_nothing = stop_text(stop, chose=True), stop_text(stop, chose=False)
    assert chose and chose_nothing.startswith(chose) and chose_nothing != chose
    assert len({stop_text(reason, chose=True) for reason in StopReason}) == len(StopReason)
