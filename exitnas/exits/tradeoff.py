"""Accuracy-FLOPs trade-off curves of exit policies: max-softmax, learned, oracle.

For every budget, the max-softmax baseline and the learned policy are calibrated the same way on
the same split (:func:`~exitnas.exits.calibrate.calibrate_thresholds`), then scored on a test
split (the calibration split itself when none is given). The oracle knows the labels: it is the
best any policy choosing among these exits can do, so it bounds both from above.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from exitnas.exits.calibrate import calibrate_thresholds
from exitnas.exits.features import check_labels, check_logits
from exitnas.exits.learned import LearnedExitPolicy
from exitnas.exits.policy import StudyPolicy
from exitnas.exits.rules import confidences, exit_indices, score_exits, softmax

__all__ = ["TradeoffCurve", "TradeoffCurves", "area_between", "oracle_exits", "tradeoff_curve"]


def oracle_exits(
    logits: np.ndarray,
    labels: np.ndarray,
    stage_flops: Any = None,
    budget_flops: float | None = None,
) -> np.ndarray:
    """Exits chosen with knowledge of the labels.

    Without a budget every sample leaves at its first correct exit (the last exit if none is
    correct). With ``stage_flops`` and ``budget_flops``, samples no exit gets right leave at
    exit 0, and the samples that are cheapest to get right leave at their first correct exit
    while the expected cost stays within budget (the rest leave at exit 0): the highest accuracy
    any policy can reach at that budget.

    Args:
        logits: ``(E, N, K)`` logits.
        labels: ``(N,)`` true classes.
        stage_flops: ``(E,)`` FLOPs per image of each stage (with ``budget_flops`` only).
        budget_flops: largest allowed expected FLOPs per image, or ``None``.

    Returns:
        ``(N,)`` exit indices.

    Example:
        >>> logits = np.array([[[1.0, 0.0]], [[0.0, 1.0]]])  # exit 0 says 0, exit 1 says 1
        >>> oracle_exits(logits, np.array([1])).tolist()
        [1]
    """
    logits = check_logits(logits)
    labels = check_labels(labels, logits.shape[1])
    correct = logits.argmax(axis=-1) == labels[None, :]  # (E, N)
    num_exits, num_samples = correct.shape
    first = np.where(correct.any(axis=0), correct.argmax(axis=0), num_exits - 1)
    if budget_flops is None:
        return first
    if stage_flops is None:
        raise ValueError("oracle_exits: budget_flops needs stage_flops")
    cumulative = np.cumsum(np.asarray(stage_flops, dtype=np.float64))
    if budget_flops < cumulative[0] * (1 - 1e-12):
        raise ValueError(
            f"budget_flops={budget_flops:g} is below the cheapest achievable expected cost "
            f"{cumulative[0]:g} FLOPs (every sample at exit 0)"
        )
    reachable = np.flatnonzero(correct.any(axis=0))
    extra = cumulative[first[reachable]] - cumulative[0]  # cost above exit 0 of getting it right
    order = np.argsort(extra, kind="stable")
    spare = (budget_flops - cumulative[0]) * num_samples * (1 + 1e-12)
    chosen = order[np.cumsum(extra[order]) <= spare]  # cheapest first: optimal for equal values
    taken = np.zeros(num_samples, dtype=np.int64)
    taken[reachable[chosen]] = first[reachable[chosen]]
    return taken


@dataclass(frozen=True)
class TradeoffCurve:
    """One policy's accuracy and expected FLOPs at each budget."""

    name: str  # "max_softmax", "learned" or "oracle"
    budgets: tuple[float, ...]  # expected-FLOPs budgets the thresholds were calibrated for
    flops: tuple[float, ...]  # expected FLOPs per image reached on the test split
    accuracy: tuple[float, ...]  # accuracy on the test split


@dataclass(frozen=True)
class TradeoffCurves:
    """The three curves :func:`tradeoff_curve` computes."""

    max_softmax: TradeoffCurve
    learned: TradeoffCurve
    oracle: TradeoffCurve


def tradeoff_curve(
    policy: LearnedExitPolicy | StudyPolicy,
    logits: np.ndarray,
    labels: np.ndarray,
    stage_flops: Any,
    budgets: Sequence[float],
    test_logits: np.ndarray | None = None,
    test_labels: np.ndarray | None = None,
    num_candidates: int = 64,
    refine: bool = False,
) -> TradeoffCurves:
    """Accuracy and FLOPs of max-softmax thresholds, the learned policy and the oracle.

    Both threshold policies are calibrated on ``logits`` / ``labels`` with the same procedure:
    one threshold shared by all exits (MSDNet / CF-ViT protocol), plus per-exit refinement for
    both when ``refine``. The oracle uses the test labels at each budget.

    Args:
        policy: a fitted :class:`LearnedExitPolicy` (fit it on another split than this one),
            or a :class:`~exitnas.exits.policy.StudyPolicy` fitted on these
            calibration samples (its out-of-fold scores are used for calibration).
        logits: ``(E, N, K)`` calibration logits.
        labels: ``(N,)`` calibration labels.
        stage_flops: ``(E,)`` FLOPs per image of each stage.
        budgets: expected-FLOPs budgets per image.
        test_logits: ``(E, M, K)`` logits the curves are measured on; default ``logits``.
        test_labels: ``(M,)`` labels of ``test_logits``; default ``labels``.
        num_candidates: quantiles of the scores tried as thresholds.
        refine: per-exit refinement of both policies' thresholds.

    Returns:
        The three curves.

    Raises:
        ValueError: a budget is below the cheapest achievable expected cost.

    Example:
        >>> curves = tradeoff_curve(policy, val_logits, val_labels, stage_flops, [1e8, 2e8])
        >>> area_between(curves.learned, curves.max_softmax)  # mean accuracy gain
    """
    logits = check_logits(logits, min_exits=2)
    labels = check_labels(labels, logits.shape[1])
    if (test_logits is None) != (test_labels is None):
        raise ValueError("give both test_logits and test_labels, or neither")
    test_logits = logits if test_logits is None else check_logits(test_logits, min_exits=2)
    test_labels = labels if test_labels is None else test_labels
    test_labels = check_labels(test_labels, test_logits.shape[1])

    cumulative = np.cumsum(np.asarray(stage_flops, dtype=np.float64))
    correct = logits.argmax(axis=-1) == labels[None, :]
    test_correct = test_logits.argmax(axis=-1) == test_labels[None, :]
    confidence = confidences(softmax(logits), "max_softmax")
    test_confidence = confidences(softmax(test_logits), "max_softmax")
    learned_scores, test_learned_scores = _learned_scores(policy, logits, test_logits)

    points: dict[str, list[tuple[float, float]]] = {"max_softmax": [], "learned": [], "oracle": []}
    for budget in budgets:
        for name, scores, test_scores in (
            ("max_softmax", confidence, test_confidence),
            ("learned", learned_scores, test_learned_scores),
        ):
            thresholds = calibrate_thresholds(
                scores, correct, stage_flops, budget, num_candidates, refine
            )
            taken = exit_indices(test_scores, thresholds)
            outcome = score_exits(taken, test_correct, cumulative)
            points[name].append((outcome.accuracy, outcome.expected_flops))
        taken = oracle_exits(test_logits, test_labels, stage_flops, budget)
        outcome = score_exits(taken, test_correct, cumulative)
        points["oracle"].append((outcome.accuracy, outcome.expected_flops))

    return TradeoffCurves(
        *(_curve(name, budgets, points[name]) for name in ("max_softmax", "learned", "oracle"))
    )


def _learned_scores(
    policy: LearnedExitPolicy | StudyPolicy, logits: np.ndarray, test_logits: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``(E, N)`` calibration and ``(E, M)`` test scores of the learned policy.

    A :class:`~exitnas.exits.policy.StudyPolicy` is cross-fitted on the calibration samples,
    so they are scored out of fold.
    """
    if isinstance(policy, StudyPolicy):
        return policy.validation_scores(logits), policy.scores(test_logits)
    return policy.score_samples(logits), policy.score_samples(test_logits)


def _curve(
    name: str, budgets: Sequence[float], points: Sequence[tuple[float, float]]
) -> TradeoffCurve:
    """The curve of ``(accuracy, expected_flops)`` points, one per budget."""
    return TradeoffCurve(
        name=name,
        budgets=tuple(float(b) for b in budgets),
        flops=tuple(flops for _, flops in points),
        accuracy=tuple(accuracy for accuracy, _ in points),
    )


def area_between(
    curve_a: TradeoffCurve, curve_b: TradeoffCurve, num_points: int = 256, normalize: bool = True
) -> float:
    """Signed area between two accuracy-FLOPs curves (positive where ``curve_a`` is higher).

    Each curve is linearly interpolated on a common grid over the FLOPs range both cover (at one
    FLOPs value reached twice, the higher accuracy counts).

    Args:
        curve_a: first curve.
        curve_b: second curve.
        num_points: grid points.
        normalize: divide by the grid's FLOPs width: the mean accuracy gap; otherwise the area
            in accuracy x FLOPs.

    Returns:
        The area (or mean gap).

    Raises:
        ValueError: the curves' FLOPs ranges do not overlap on an interval.

    Example:
        >>> area_between(curves.learned, curves.max_softmax)
    """

    def envelope(curve: TradeoffCurve) -> tuple[np.ndarray, np.ndarray]:
        flops = np.asarray(curve.flops, dtype=np.float64)
        accuracy = np.asarray(curve.accuracy, dtype=np.float64)
        unique, inverse = np.unique(flops, return_inverse=True)
        best = np.full(unique.shape, -np.inf)
        np.maximum.at(best, inverse, accuracy)
        return unique, best

    flops_a, acc_a = envelope(curve_a)
    flops_b, acc_b = envelope(curve_b)
    if flops_a.size == 0 or flops_b.size == 0:
        raise ValueError("area_between: empty curve")
    low, high = max(flops_a[0], flops_b[0]), min(flops_a[-1], flops_b[-1])
    if not high > low:
        raise ValueError(
            f"area_between: FLOPs ranges of {curve_a.name!r} [{flops_a[0]:g}, {flops_a[-1]:g}] "
            f"and {curve_b.name!r} [{flops_b[0]:g}, {flops_b[-1]:g}] do not overlap"
        )
    grid = np.linspace(low, high, num_points)
    gap = np.interp(grid, flops_a, acc_a) - np.interp(grid, flops_b, acc_b)
    area = float(np.sum((gap[1:] + gap[:-1]) / 2 * np.diff(grid)))  # trapezoid rule
    return area / (high - low) if normalize else area
