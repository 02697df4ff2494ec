"""Exit thresholds for an expected-FLOPs budget (MSDNet's budget calibration).

:func:`calibrate_thresholds` takes any per-exit scores (a confidence rule's or a learned
policy's) and the exits' correctness on a calibration split, and returns the per-exit thresholds
that maximise accuracy while the expected FLOPs per image stay within the budget.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from exitnas.exits.rules import exit_indices, score_exits

__all__ = ["calibrate_thresholds"]

Key = Callable[[np.ndarray], tuple[float, float]]  # thresholds -> (accuracy, -cost) to maximise


def _candidates(scores: np.ndarray, num: int) -> np.ndarray:
    """Threshold candidates: score quantiles plus 0 (everyone exits) and inf (nobody does)."""
    quantiles = np.quantile(scores, np.linspace(0.0, 1.0, num)) if scores.size else []
    return np.unique(np.concatenate([[0.0, np.inf], quantiles]))


def _coordinate_ascent(
    start: np.ndarray, key: Key, scores: np.ndarray, num_candidates: int
) -> tuple[np.ndarray, tuple[float, float]]:
    """Improve one exit's threshold at a time, the others fixed, until nothing improves.

    Args:
        start: ``(E - 1,)`` thresholds to start from.
        key: what to maximise.
        scores: ``(E, N)`` scores; exit ``k``'s candidates are quantiles of ``scores[k]``.
        num_candidates: quantiles tried per exit.

    Returns:
        ``(thresholds, key(thresholds))`` where no single exit's change improves the key.
    """
    current, current_key = start, key(start)
    improved = True
    while improved:
        improved = False
        for k in range(len(current)):
            for t in _candidates(scores[k], num_candidates):
                trial = current.copy()
                trial[k] = t
                trial_key = key(trial)
                if trial_key > current_key:
                    current, current_key, improved = trial, trial_key, True
    return current, current_key


def _cumulative_cost(
    scores: np.ndarray, correct: np.ndarray, stage_cost: Any, budget: float, unit: str
) -> np.ndarray:
    """``(E,)`` cost per image up to each exit, once the arrays and the budget are checked."""
    cumulative = np.cumsum(np.asarray(stage_cost, dtype=np.float64))
    if cumulative.shape != scores.shape[:1] or correct.shape != scores.shape:
        raise ValueError(
            f"scores {scores.shape}, correct {correct.shape} and stage costs "
            f"{cumulative.shape} disagree on the number of exits"
        )
    cheapest = float(cumulative[0])
    if budget < cheapest * (1 - 1e-12):
        raise ValueError(
            f"budget={budget:g} is below the cheapest achievable expected cost "
            f"{cheapest:g} {unit} (every sample at exit 0)"
        )
    return cumulative


def calibrate_thresholds(
    scores: np.ndarray,
    correct: np.ndarray,
    stage_cost: Any,
    budget: float,
    num_candidates: int = 64,
    refine: bool = True,
    num_starts: int = 3,
    unit: str = "FLOPs",
) -> np.ndarray:
    """Thresholds maximising accuracy subject to expected cost <= ``budget``.

    First one threshold shared by all exits is swept over the scores' quantiles (MSDNet /
    CF-ViT protocol); with ``refine``, each exit's threshold is then improved in turn, keeping
    the others fixed, until nothing improves (coordinate ascent), starting from the
    ``num_starts`` best shared thresholds and from "everyone at exit 0". Ties in accuracy go to
    the cheaper thresholds.

    Args:
        scores: ``(E, N)`` scores in [0, 1] (a confidence or a policy's score); higher exits sooner.
        correct: ``(E, N)`` whether each exit's prediction is correct.
        stage_cost: ``(E,)`` cost per image of each stage, in any additive unit (FLOPs,
            MFLOPs, ms).
        budget: largest allowed expected cost per image, in the same unit.
        num_candidates: quantiles of the scores tried as thresholds.
        refine: per-exit refinement after the shared sweep.
        num_starts: best shared thresholds the refinement starts from.
        unit: the cost's unit, for the error message.

    Returns:
        ``(E - 1,)`` thresholds (``np.inf``: never exit there).

    Raises:
        ValueError: the budget is below the cheapest achievable expected cost (everyone at exit 0).

    Example:
        >>> scores = np.array([[0.9, 0.2], [1.0, 1.0]]); correct = np.ones((2, 2), dtype=bool)
        >>> calibrate_thresholds(scores, correct, [1.0, 1.0], 1.5).tolist()
        [0.0]
    """
    scores = np.clip(np.asarray(scores, dtype=np.float64), 0.0, 1.0)
    correct = np.asarray(correct, dtype=bool)
    cumulative = _cumulative_cost(scores, correct, stage_cost, budget, unit)

    def key(thresholds: np.ndarray) -> tuple[float, float]:
        """(accuracy, -cost) to maximise; (-inf, -inf) when over budget."""
        outcome = score_exits(exit_indices(scores, thresholds), correct, cumulative)
        cost = outcome.expected_flops
        return (outcome.accuracy, -cost) if cost <= budget * (1 + 1e-12) else (-np.inf, -np.inf)

    num_thresholds = scores.shape[0] - 1
    zeros = np.zeros(num_thresholds)  # everyone at exit 0: always within budget
    shared: dict[tuple[float, float], np.ndarray] = {}
    for t in _candidates(scores[:-1], num_candidates):
        trial = np.full(num_thresholds, t)
        shared.setdefault(key(trial), trial)
    # The best few shared thresholds (and exit 0 for all) seed the refinement: one greedy
    # start can stall in a local optimum that a smaller budget's search escaped.
    ranked = [k for k in sorted(shared, reverse=True) if k[0] > -np.inf]
    starts = [shared[k] for k in ranked[: num_starts if refine else 1]] + [zeros]

    best, best_key = zeros, key(zeros)
    for current in starts:
        if refine:
            current, current_key = _coordinate_ascent(current, key, scores, num_candidates)
        else:
            current_key = key(current)
        if current_key > best_key:
            best, best_key = current, current_key
    return best
