"""Certifying the accuracy budget: a bound on a circuit's accuracy loss against the float model that holds with
confidence ``1 - δ``, read from rows that played no part in choosing the circuit.

Pure: per-row losses in, bounds and decisions out; nothing of models or circuits.

- **Per-row loss** (``paired_losses``): on each row, whether the float model was right minus whether the circuit
  was (the mean over the circuit's simulation draws, since its bootstraps may err at random): a value in [-1, 1]
  whose mean is the accuracy the circuit loses against the float model. Paired, so what both models get right or
  both get wrong adds no noise.
- **Bound** (``upper_bound``, ``interval``): a betting confidence bound for the mean of a bounded variable
  (Waudby-Smith and Ramdas, "Estimating means of bounded random variables by betting", JRSS-B 2023; the
  predictable plug-in bets tuned for a fixed number of rows). Valid for any distribution on [-1, 1] with no
  normal approximation, and as tight as the data's variance allows: a circuit that rarely disagrees with the
  float model earns a tight bound. Its floor is the rule of three: ``n`` rows without a single loss certify
  about ``3/n`` at 95%, so a 1-point budget needs at least 300 rows even for a circuit that never errs.
- **Choice** (``certify_in_order``): Learn-then-Test's fixed-sequence testing (Angelopoulos et al. 2021; the
  order from a separate split, as in Pareto Testing, Laufer-Goldshtein et al. 2023). The candidates are tested in
  a fixed order, each at level δ, and testing stops at the first that does not certify; every candidate
  certified before it is within the budget with probability at least ``1 - δ`` jointly, so the cheapest of them
  may be chosen. The order must not depend on the certification rows: ``pareto_order`` derives it from the
  search split.

Written by hand: no well-kept package offers the betting bound without native builds and plotting dependencies
(``confseq`` needs CMake and Boost and pulls matplotlib and pytest at run time).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

DEFAULT_CONFIDENCE = 0.95
# A bet against a tested mean m of the [0, 1]-scaled loss is capped at BET_SHARE / (1 - m), so that no row can
# take all the capital (Waudby-Smith and Ramdas's c = 3/4). The capital still grows with m, so bounds bisect.
BET_SHARE = 0.75
MOST_ROWS_ESTIMATED = 1 << 22  # beyond this many rows, "rows needed" is reported as not reachable
Losses = npt.NDArray[np.float64]


def paired_losses(
    labels: npt.NDArray[np.int64], float_predictions: npt.NDArray[np.int64], circuit_draws: Sequence[npt.ArrayLike]
) -> Losses:
    """Per row: 1 if the float model was right, minus the share of the circuit's draws that were right."""
    if not circuit_draws:
        raise ValueError("at least one draw of the circuit's predictions is needed")
    float_right = (np.asarray(float_predictions) == labels).astype(np.float64)
    circuit_right = np.mean([np.asarray(draw) == labels for draw in circuit_draws], axis=0)
    return np.asarray(float_right - circuit_right, dtype=np.float64)


def validate_confidence(confidence: float) -> None:
    if not 0.5 <= confidence < 1.0:  # NaN fails too
        raise ValueError(f"the budget's confidence must be in [0.5, 1) (0.95: δ = 5%), got {confidence}")


def _log_capital(scaled: Losses, mean: float, risk: float) -> float:
    """Log of the capital of bets that the scaled loss's mean is below ``mean`` (the predictable plug-in bets of
    Waudby-Smith and Ramdas, for ``len(scaled)`` rows and level ``risk``). At least ``log(1/risk)``: the mean is
    below ``mean``, with error probability at most ``risk``."""
    n = len(scaled)
    if n == 0:
        return 0.0
    t = np.arange(1, n + 1, dtype=np.float64)
    running_mean = (0.5 + np.cumsum(scaled)) / (t + 1)
    running_variance = (0.25 + np.cumsum((scaled - running_mean) ** 2)) / (t + 1)
    previous_variance = np.concatenate(([0.25], running_variance[:-1]))  # predictable: rows before this one
    bets = np.minimum(np.sqrt(2 * math.log(1 / risk) / (n * previous_variance)), BET_SHARE / (1 - mean))
    return float(np.sum(np.log1p(-bets * (scaled - mean))))


def _rejects(losses: Losses, loss: float, risk: float) -> bool:
    """Whether the rows show, at level ``risk``, that the mean loss is below ``loss`` (in [-1, 1))."""
    scaled = (np.asarray(losses, dtype=np.float64) + 1) / 2
    return _log_capital(scaled, (1 + loss) / 2, risk) >= math.log(1 / risk)


def upper_bound(losses: Losses, confidence: float, resolution: float = 1e-4) -> float:
    """The smallest loss the rows show the mean is below, with probability ``confidence`` (1 when there are no
    rows; negative where the circuit is surely better than the float model). The capital grows with the loss
    tested, so a bisection finds it."""
    validate_confidence(confidence)
    risk = 1 - confidence
    low, high = -1.0, 1.0 - resolution  # low is never rejected; high must be
    if len(losses) == 0 or not _rejects(losses, high, risk):
        return 1.0
    while high - low > resolution:
        middle = (low + high) / 2
        low, high = (low, middle) if _rejects(losses, middle, risk) else (middle, high)
    return high


def interval(losses: Losses, confidence: float) -> tuple[float, float]:
    """A two-sided interval for the mean loss at ``confidence``, each side at half the risk: how far the loss may
    be from the point estimate, in both directions."""
    validate_confidence(confidence)
    half = 1 - (1 - confidence) / 2
    upper = upper_bound(losses, half)
    lower = -upper_bound(-np.asarray(losses, dtype=np.float64), half)  # the bound on the gain, negated
    return min(lower, upper), upper


def certifies(losses: Losses, budget: float, confidence: float) -> bool:
    """Whether the rows show the mean loss is within ``budget`` with probability ``confidence``."""
    validate_confidence(confidence)
    return len(losses) > 0 and budget < 1.0 and _rejects(losses, budget, 1 - confidence)


def rows_needed(losses: Losses, budget: float, confidence: float) -> int | None:
    """About how many rows like these would certify ``budget`` at ``confidence``: the rows' losses repeated in a
    shuffled order until they do. None when no number would: their mean is not below the budget."""
    losses = np.asarray(losses, dtype=np.float64)
    if len(losses) == 0 or float(losses.mean()) >= budget:
        return None
    rng = np.random.default_rng(0)

    def like(n: int) -> Losses:
        return rng.permutation(np.resize(losses, n))

    high = max(len(losses), 16)
    while not certifies(like(high), budget, confidence):
        high *= 2
        if high > MOST_ROWS_ESTIMATED:
            return None
    low = high // 2
    while high - low > max(1, high // 100):  # to about 1%: an estimate, not a promise
        middle = (low + high) // 2
        low, high = (low, middle) if certifies(like(middle), budget, confidence) else (middle, high)
    return high


@dataclass(frozen=True)
class Contender:
    """A candidate as the order sees it: its position among the search's candidates, its cost, and the bound the
    search split gave its loss (what makes it likely to certify)."""

    index: int
    cost: float
    search_bound: float


def pareto_order(contenders: Sequence[Contender]) -> list[int]:
    """The candidates worth testing, in the order to test them: those no other candidate beats on both cost and
    search-split bound (the Pareto front), the most likely to certify first (ties: the cheaper first)."""

    def beaten(c: Contender) -> bool:
        at_least_as_good = [o for o in contenders if o.cost <= c.cost and o.search_bound <= c.search_bound]
        return any((o.cost, o.search_bound) != (c.cost, c.search_bound) for o in at_least_as_good)

    front = [c for c in contenders if not beaten(c)]
    return [c.index for c in sorted(front, key=lambda c: (c.search_bound, c.cost, c.index))]


@dataclass(frozen=True)
class Verdict:
    index: int
    bound: float
    certified: bool


def certify_in_order(order: Sequence[int], test: Callable[[int], Verdict]) -> list[Verdict]:
    """Fixed-sequence testing: ``test`` each candidate in ``order`` until one does not certify (it is the last
    one returned). Every candidate returned as certified is within the budget, jointly, with the confidence."""
    tested: list[Verdict] = []
    for index in order:
        tested.append(test(index))
        if not tested[-1].certified:
            break
    return tested
