"""The accuracy budget's certification on synthetic losses with known truth: the bound covers the true loss at its
confidence, and a search that certifies its choice on rows it did not choose on keeps the budget where choosing by
the validation split's point estimate does not."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from containers.training import certification
from containers.training.certification import Contender, Verdict, certify_in_order, pareto_order
from containers.training.search_policy import Budget

CONFIDENCE = 0.95
DELTA = 1 - CONFIDENCE


def rows(rng: np.random.Generator, loss: float, disagreement: float, n: int) -> np.ndarray:  # type: ignore[type-arg]
    """Per-row losses of a circuit that disagrees with the float model on ``disagreement`` of the rows, losing on
    a share of them such that its mean loss is ``loss``."""
    lost, gained = (disagreement + loss) / 2, (disagreement - loss) / 2
    return rng.choice([1.0, 0.0, -1.0], p=[lost, 1 - lost - gained, gained], size=n)


@pytest.mark.parametrize(("loss", "disagreement", "n"), [(0.02, 0.08, 300), (0.0, 0.01, 500), (0.05, 0.3, 120)])
def test_the_bound_is_below_the_true_loss_in_at_most_delta_of_trials(loss: float, disagreement: float, n: int) -> None:
    rng = np.random.default_rng(7)
    trials = 1500
    missed = sum(certification.upper_bound(rows(rng, loss, disagreement, n), CONFIDENCE) < loss for _ in range(trials))
    assert missed / trials <= DELTA + 0.015, missed / trials  # the binomial spread of 1,500 trials at 5%


def test_fractional_losses_from_several_draws_are_bounded_too() -> None:
    """A circuit whose bootstraps may err is judged on the mean of its draws: per-row losses between -1 and 1."""
    rng = np.random.default_rng(3)
    trials, missed, true_loss = 800, 0, 0.01
    labels = np.zeros(400, dtype=np.int64)
    for _ in range(trials):
        float_right = rng.random(400) < 0.95
        float_predictions = np.where(float_right, 0, 1)
        # Each draw flips a row away from the float model's answer with probability 2%: true loss 0.95*0.02 - ...
        draws = [np.where(rng.random(400) < 0.02, 1 - float_predictions, float_predictions) for _ in range(3)]
        losses = certification.paired_losses(labels, float_predictions, draws)
        assert set(np.round(losses * 3)) <= {-3, -2, -1, 0, 1, 2, 3}
        true_loss = 0.95 * 0.02 - 0.05 * 0.02
        missed += certification.upper_bound(losses, CONFIDENCE) < true_loss
    assert missed / trials <= DELTA + 0.02


def test_the_interval_holds_the_point_estimate_and_narrows_with_rows() -> None:
    rng = np.random.default_rng(1)
    few, many = rows(rng, 0.01, 0.06, 200), rows(rng, 0.01, 0.06, 5000)
    for losses in (few, many):
        lower, upper = certification.interval(losses, CONFIDENCE)
        assert lower < losses.mean() < upper
        assert upper > certification.upper_bound(losses, CONFIDENCE) - 1e-3  # two-sided: each side at δ/2
    assert np.subtract(*certification.interval(many, CONFIDENCE)[::-1]) < np.subtract(
        *certification.interval(few, CONFIDENCE)[::-1]
    )
    # A circuit clearly worse than its budget: the whole interval is above it.
    lower, _ = certification.interval(rows(rng, 0.08, 0.1, 2000), CONFIDENCE)
    assert lower > 0.05


def test_what_rows_can_certify_follows_the_rule_of_three() -> None:
    """Rows without a single loss certify about 4/n at 95% (the rule of three is 3/n): a one-point budget needs
    some 400 rows even for a circuit that never disagrees with the float model."""
    assert not certification.certifies(np.zeros(200), 0.01, CONFIDENCE)
    assert certification.certifies(np.zeros(600), 0.01, CONFIDENCE)
    needed = certification.rows_needed(np.zeros(200), 0.01, CONFIDENCE)
    assert needed is not None and 300 <= needed <= 600
    assert certification.certifies(np.zeros(needed), 0.01, CONFIDENCE)
    assert certification.rows_needed(np.full(100, 0.02), 0.01, CONFIDENCE) is None  # its loss is over the budget
    assert certification.upper_bound(np.array([]), CONFIDENCE) == 1.0
    with pytest.raises(ValueError, match="confidence must be in"):
        certification.upper_bound(np.zeros(10), 1.0)


def test_the_order_is_the_pareto_front_likeliest_first() -> None:
    contenders = [
        Contender(0, cost=10.0, search_bound=0.004),  # the given levers: safe, dear
        Contender(1, cost=5.0, search_bound=0.008),
        Contender(2, cost=6.0, search_bound=0.009),  # beaten by 1 on both
        Contender(3, cost=2.0, search_bound=0.02),
        Contender(4, cost=2.0, search_bound=0.02),  # a tie with 3: both stay, the first first
    ]
    assert pareto_order(contenders) == [0, 1, 3, 4]


def test_fixed_sequence_testing_stops_at_the_first_failure() -> None:
    """A candidate after the first failure is not tested, even if it would certify: testing it would spend the
    confidence twice."""
    outcomes = {0: True, 1: True, 3: False, 4: True}
    tested = certify_in_order([0, 1, 3, 4], lambda i: Verdict(i, 0.0, outcomes[i]))
    assert [t.index for t in tested] == [0, 1, 3]


# ---- the choice: certified against the validation split's point estimate ---------------------------------------


@dataclass(frozen=True)
class SyntheticCandidate:
    true_loss: float
    cost: float


# The given levers first (exact: no loss), then cheaper circuits that lose more, many just above the budget: the
# search's usual landscape.
LANDSCAPE = [
    SyntheticCandidate(0.0, 10.0),
    SyntheticCandidate(0.002, 8.0),
    SyntheticCandidate(0.005, 6.0),
    SyntheticCandidate(0.008, 5.0),
    SyntheticCandidate(0.011, 4.5),
    SyntheticCandidate(0.012, 4.0),
    SyntheticCandidate(0.013, 3.5),
    SyntheticCandidate(0.015, 3.0),
    SyntheticCandidate(0.017, 2.5),
    SyntheticCandidate(0.02, 2.0),
    SyntheticCandidate(0.025, 1.5),
    SyntheticCandidate(0.03, 1.0),
]
BUDGET = 0.01
DISAGREEMENT = 0.02  # each circuit disagrees with the float model on 2% of the rows, losses and gains together


def choose_by_estimate(validation: list[np.ndarray]) -> int:  # type: ignore[type-arg]
    """Yesterday's rule: the cheapest candidate whose validation point estimate is within the budget."""
    budget = Budget(reference_accuracy=0.0, accuracy_loss=BUDGET)
    within = [i for i, losses in enumerate(validation) if budget.admits(-float(losses.mean()))]
    return min(within, key=lambda i: LANDSCAPE[i].cost) if within else 0


def choose_by_certification(validation: list[np.ndarray], held_out: list[np.ndarray]) -> int:  # type: ignore[type-arg]
    """The search's rule: order on the validation split, certify on the held-out rows, the cheapest certified."""
    budget = Budget(reference_accuracy=0.0, accuracy_loss=BUDGET)
    contenders = [
        Contender(i, LANDSCAPE[i].cost, certification.upper_bound(losses, CONFIDENCE))
        for i, losses in enumerate(validation)
        if budget.admits(-float(losses.mean()))
    ]

    def test(i: int) -> Verdict:
        return Verdict(i, 0.0, certification.certifies(held_out[i], BUDGET, CONFIDENCE))

    certified = [t.index for t in certify_in_order(pareto_order(contenders), test) if t.certified]
    return min(certified, key=lambda i: LANDSCAPE[i].cost) if certified else 0  # none: the given levers


def test_the_certified_choice_exceeds_the_budget_in_at_most_delta_of_trials() -> None:
    """Many searches over the same landscape, each with its own random rows: choosing by the point estimate on a
    small validation split picks a candidate whose true loss exceeds the budget far more often than δ; certifying on
    held-out rows keeps it within δ, and still finds cheaper circuits than the given levers."""
    rng = np.random.default_rng(11)
    trials = 400
    estimate_exceeds = certified_exceeds = certified_cheaper = 0
    for _ in range(trials):
        validation = [rows(rng, c.true_loss, DISAGREEMENT + c.true_loss, 300) for c in LANDSCAPE]
        held_out = [rows(rng, c.true_loss, DISAGREEMENT + c.true_loss, 3000) for c in LANDSCAPE]
        estimate_exceeds += LANDSCAPE[choose_by_estimate(validation)].true_loss > BUDGET
        chosen = choose_by_certification(validation, held_out)
        certified_exceeds += LANDSCAPE[chosen].true_loss > BUDGET
        certified_cheaper += chosen != 0
    assert certified_exceeds / trials <= DELTA, certified_exceeds
    assert estimate_exceeds / trials >= 0.5, estimate_exceeds  # the luckiest estimate wins: the budget is broken
    assert certified_cheaper / trials >= 0.2, certified_cheaper  # not by refusing everything
