"""Budget queries: the most accurate configuration and exit rule within a cost per image.

For every configuration of a study's Pareto front and every exit rule on offer (the
configuration's own confidence rule, and the learned policy when one is fitted), thresholds
are calibrated on the validation split for the budget
(:func:`~exitnas.policies.learned.calibrate_thresholds`, MSDNet's protocol); the thresholds the
search found are kept on offer too, so the answer is never less accurate than a Pareto point
within the budget. The answer is the (configuration, rule) with the highest validation
accuracy whose expected cost stays within it (the cheaper one among ties).

The budget is in milliseconds per image on a profiled device (stage latencies at batch size 1,
measured or predicted by the device's latency model) or in MFLOPs per image.

Example:
    >>> answer = answer_budget(candidates, labels, Budget("ms", 2.5), policy=policy)
    >>> answer.rule, answer.accuracy, answer.latency_ms
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from exitnas.errors import ExitnasError
from exitnas.policies.learned import calibrate_thresholds
from exitnas.policies.study_policy import StudyPolicy
from exitnas.search.export import ParetoPoint
from exitnas.search.rules import LEARNED, ExitRule, confidences, exit_indices, score_exits, softmax

__all__ = ["METRICS", "Budget", "BudgetAnswer", "BudgetError", "Candidate", "answer_budget"]

METRICS = ("ms", "mflops")


class BudgetError(ExitnasError):
    """A budget no configuration meets, or one that cannot be read."""


@dataclass(frozen=True)
class Budget:
    """A cost limit per image."""

    metric: str  # "ms" (expected latency on a device) or "mflops" (expected MFLOPs)
    value: float

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise BudgetError(f"budget metric {self.metric!r} is not allowed; allowed: {METRICS}")
        if not np.isfinite(self.value) or self.value <= 0:
            raise BudgetError(f"budget: {self.value} {self.metric} must be a positive number")

    def flag(self) -> str:
        return f"--budget-{self.metric} {self.value:g}"


@dataclass(frozen=True)
class Candidate:
    """A Pareto configuration with what a query needs: its validation logits and stage costs."""

    point: ParetoPoint
    logits: np.ndarray  # (E, N, K) validation logits
    stage_ms: np.ndarray | None = None  # (E,) ms per image on the device, if one is given
    stage_ms_measured: np.ndarray | None = None  # (E,) which of them were measured

    def stage_cost(self, metric: str) -> np.ndarray:
        if metric == "mflops":
            return np.asarray(self.point.stage_flops, dtype=np.float64) / 1e6
        if self.stage_ms is None:
            raise BudgetError("a budget in ms needs a profiled device (--device)")
        return np.asarray(self.stage_ms, dtype=np.float64)


@dataclass(frozen=True)
class BudgetAnswer:
    """The chosen configuration and calibrated exit rule, with their expected costs."""

    budget: Budget
    device: str | None
    point: ParetoPoint  # the Pareto point whose configuration was chosen (search-time metrics)
    rule: ExitRule  # calibrated for the budget on the validation split
    accuracy: float  # validation accuracy under ``rule``
    mflops: float  # expected MFLOPs per image under ``rule``
    latency_ms: float | None  # expected ms per image on ``device``
    exit_fractions: tuple[float, ...]  # validation samples leaving at each exit
    stage_ms: tuple[float, ...] | None
    latency_source: str | None  # "measured", "predicted" or "measured+predicted"
    options: int  # (configuration, rule) pairs that met the budget

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready answer (what ``exitnas policy query`` prints)."""
        return {
            "budget": {"metric": self.budget.metric, "value": self.budget.value},
            "device": self.device,
            "pareto_index": self.point.index,
            "trial_number": self.point.trial_number,
            "config": self.point.config.to_dict(),
            "rule": self.rule.to_dict(),
            "expected": {
                "val_accuracy": self.accuracy,
                "mflops": self.mflops,
                "latency_ms": self.latency_ms,
                "exit_fractions": list(self.exit_fractions),
            },
            "stage_mflops": [f / 1e6 for f in self.point.stage_flops],
            "stage_ms": None if self.stage_ms is None else list(self.stage_ms),
            "latency_source": self.latency_source,
            "options_within_budget": self.options,
        }


def _source(measured: np.ndarray | None) -> str | None:
    if measured is None:
        return None
    if measured.all():
        return "measured"
    return "predicted" if not measured.any() else "measured+predicted"


def answer_budget(
    candidates: Sequence[Candidate],
    labels: np.ndarray,
    budget: Budget,
    *,
    policy: StudyPolicy | None = None,
    device: str | None = None,
    num_candidates: int = 64,
) -> BudgetAnswer:
    """The most accurate (configuration, calibrated rule) within ``budget`` on validation data.

    Args:
        candidates: the Pareto configurations with their validation logits (and stage ms).
        labels: ``(N,)`` validation labels.
        budget: cost limit per image.
        policy: a fitted study policy: the ``learned`` rule is offered too (calibrated on its
            out-of-fold validation scores).
        device: name of the device the stage latencies are from (recorded in the answer).
        num_candidates: threshold candidates per exit (quantiles of the scores).

    Returns:
        The :class:`BudgetAnswer`.

    Raises:
        BudgetError: no candidates, or the budget is below the cheapest achievable cost (every
            sample at the first exit of the cheapest configuration); the message names it.
    """
    if not candidates:
        raise BudgetError("the Pareto front is empty; run exitnas search")
    labels = np.asarray(labels)
    first_costs = [float(c.stage_cost(budget.metric)[0]) for c in candidates]
    cheapest = int(np.argmin(first_costs))
    if budget.value < first_costs[cheapest] * (1 - 1e-12):
        where = f" on device {device!r}" if budget.metric == "ms" and device else ""
        raise BudgetError(
            f"{budget.flag()} is below the cheapest achievable cost{where}: "
            f"{first_costs[cheapest]:.4g} {budget.metric} per image (Pareto point "
            f"{candidates[cheapest].point.index}, every image leaving at its first exit)"
        )

    best: tuple[tuple[float, float], Candidate, ExitRule, np.ndarray] | None = None
    options = 0
    for candidate in candidates:
        cost = candidate.stage_cost(budget.metric)
        if budget.value < cost[0] * (1 - 1e-12):
            continue
        logits = candidate.logits
        correct = logits.argmax(axis=-1) == labels[None, :]
        own = candidate.point.rule.rule
        offers = [(own, confidences(softmax(logits), own))]
        if policy is not None and logits.shape[0] > 1:
            offers.append((LEARNED, policy.validation_scores(logits)))
        for name, scores in offers:
            calibrated = calibrate_thresholds(scores, correct, cost, budget.value, num_candidates)
            tries = [calibrated]
            if name == own:  # the searched thresholds too: never worse than the point itself
                tries.append(np.asarray(candidate.point.rule.thresholds, dtype=np.float64))
            for thresholds in tries:
                taken = exit_indices(scores, thresholds)
                outcome = score_exits(taken, correct, np.cumsum(cost))  # "flops": cost units
                if outcome.expected_flops > budget.value * (1 + 1e-12):
                    continue
                options += thresholds is calibrated
                key = (outcome.accuracy, -outcome.expected_flops)
                if best is None or key > best[0]:
                    best = (key, candidate, ExitRule(name, tuple(thresholds.tolist())), taken)
    assert best is not None  # the cheapest candidate's first exit always fits
    _, chosen, rule, taken = best
    correct = chosen.logits.argmax(axis=-1) == labels[None, :]
    flops = score_exits(taken, correct, np.cumsum(chosen.point.stage_flops))
    latency = None
    if chosen.stage_ms is not None:
        latency = score_exits(taken, correct, np.cumsum(chosen.stage_ms)).expected_flops
    return BudgetAnswer(
        budget=budget,
        device=device,
        point=chosen.point,
        rule=rule,
        accuracy=flops.accuracy,
        mflops=flops.expected_flops / 1e6,
        latency_ms=latency,
        exit_fractions=flops.exit_fractions,
        stage_ms=None if chosen.stage_ms is None else tuple(float(m) for m in chosen.stage_ms),
        latency_source=_source(chosen.stage_ms_measured),
        options=options,
    )
