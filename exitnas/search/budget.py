"""Budget queries: the most accurate configuration and exit rule within a cost per image.

For every configuration of a study's Pareto front and every exit rule on offer (the
configuration's own confidence rule, and the learned policy when one is fitted), thresholds
are calibrated on the validation split for the budget
(:func:`~exitnas.exits.calibrate.calibrate_thresholds`, MSDNet's protocol); the thresholds the
search found are kept on offer too, so the answer is never less accurate than a Pareto point
within the budget. The answer is the (configuration, rule) with the highest validation
accuracy whose expected cost stays within it (the cheaper one among ties).

The learned rule is calibrated and chosen on out-of-fold scores (each validation image scored
by a fold policy that never saw it), but a bundle runs the policy fitted on every image. The
answer's figures (accuracy, MFLOPs, latency, exit fractions) are that deployed policy's on the
validation split, exactly what ``exitnas.load(bundle).predict`` gives there; the out-of-fold
figures the choice was made on are kept beside them (``out_of_fold``), and both must meet the
budget.

The budget is in milliseconds per image on a profiled device (stage latencies at batch size 1,
measured or predicted by the device's latency model) or in MFLOPs per image.

Example:
    >>> answer = answer_budget(candidates, labels, Budget("ms", 2.5), policy=policy)
    >>> answer.rule, answer.accuracy, answer.latency_ms
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from exitnas.devices.costs import with_policy_ms
from exitnas.errors import ExitnasError
from exitnas.exits.learned import calibrate_thresholds
from exitnas.exits.policy import StudyPolicy
from exitnas.exits.rules import LEARNED, RULES, ExitRule, exit_indices, expected_cost, score_exits
from exitnas.exits.scoring import exit_policy
from exitnas.search.front import ParetoPoint

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
    policy_ms: float = 0.0  # ms per image of each learned-policy exit decision on the device

    def stage_cost(self, metric: str, rule: str | None = None) -> np.ndarray:
        """``(E,)`` cost per image of each stage under ``rule`` (its decisions included)."""
        if metric == "mflops":
            return np.asarray(self.point.stage_flops, dtype=np.float64) / 1e6
        if self.stage_ms is None:
            raise BudgetError("a budget in ms needs a profiled device (--device)")
        return with_policy_ms(self.stage_ms, rule or "", self.policy_ms)


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
    stage_ms: tuple[float, ...] | None  # per image and stage under ``rule``, overheads included
    latency_source: str | None  # "measured", "predicted" or "measured+predicted"
    options: int  # (configuration, rule) pairs that met the budget
    # learned rule: out-of-fold (accuracy, MFLOPs) the choice was made on; the figures above
    # are the deployed policy's (fitted on every validation image), as ``predict`` gives them
    out_of_fold: tuple[float, float] | None = None

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
            "out_of_fold": None
            if self.out_of_fold is None
            else {"val_accuracy": self.out_of_fold[0], "mflops": self.out_of_fold[1]},
        }


def _source(measured: np.ndarray | None) -> str | None:
    if measured is None:
        return None
    if measured.all():
        return "measured"
    return "predicted" if not measured.any() else "measured+predicted"


@dataclass(frozen=True)
class _Option:
    """One (configuration, rule, thresholds) that meets a budget."""

    key: tuple[float, float]  # (out-of-fold accuracy, -expected cost): the higher, the better
    candidate: Candidate
    rule: ExitRule
    taken: np.ndarray  # (N,) exits under the deployed scores
    estimated: np.ndarray  # (N,) exits under the calibration (out-of-fold) scores
    calibrated: bool  # thresholds calibrated for the budget (not the searched ones)


def _offers(
    candidate: Candidate, policy: StudyPolicy | None, rule: str | None
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """The rules offered on ``candidate``: (name, calibration scores, deployed scores)."""
    logits = candidate.logits
    names = []
    if rule is None or rule in RULES:
        names.append(rule or candidate.point.rule.rule)
    if policy is not None and rule in (None, LEARNED) and logits.shape[0] > 1:
        names.append(LEARNED)
    scorers = [(name, exit_policy(name, policy)) for name in names]
    # calibrated on validation scores (out of fold for the learned rule), run deployed
    return [(name, s.validation_scores(logits), s.scores(logits)) for name, s in scorers]


def _options(
    candidate: Candidate,
    labels: np.ndarray,
    budget: Budget,
    policy: StudyPolicy | None,
    rule: str | None,
    num_candidates: int,
) -> Iterator[_Option]:
    """Every rule and threshold set on ``candidate`` whose expected cost, in the budget's
    unit, stays within it: out of fold and as deployed."""
    limit = budget.value * (1 + 1e-12)
    correct = candidate.logits.argmax(axis=-1) == labels[None, :]
    for name, calibration, deployed in _offers(candidate, policy, rule):
        stage_cost = candidate.stage_cost(budget.metric, name)  # ms or MFLOPs, as the budget
        if budget.value < stage_cost[0] * (1 - 1e-12):  # its first decision does not fit
            continue
        cumulative_cost = np.cumsum(stage_cost)
        calibrated = calibrate_thresholds(
            calibration, correct, stage_cost, budget.value, num_candidates, unit=budget.metric
        )
        tries = [calibrated]
        if name == candidate.point.rule.rule:  # the searched thresholds: never worse
            tries.append(np.asarray(candidate.point.rule.thresholds, dtype=np.float64))
        for thresholds in tries:
            # the choice is made on the honest (out-of-fold) outcome, and both it and the
            # deployed policy's must meet the budget
            estimated = exit_indices(calibration, thresholds)
            taken = exit_indices(deployed, thresholds)
            costs = (
                expected_cost(estimated, cumulative_cost),
                expected_cost(taken, cumulative_cost),
            )
            if max(costs) > limit:
                continue
            accuracy = float(correct[estimated, np.arange(estimated.size)].mean())
            exit_rule = ExitRule(name, tuple(thresholds.tolist()))
            key = (accuracy, -costs[0])
            yield _Option(key, candidate, exit_rule, taken, estimated, thresholds is calibrated)


def _cheapest_first_exit(candidates: Sequence[Candidate], budget: Budget, device: str | None):
    """Refuse a budget below every candidate's first exit (the cheapest achievable cost)."""
    first_costs = [float(c.stage_cost(budget.metric)[0]) for c in candidates]
    cheapest = int(np.argmin(first_costs))
    if budget.value < first_costs[cheapest] * (1 - 1e-12):
        where = f" on device {device!r}" if budget.metric == "ms" and device else ""
        raise BudgetError(
            f"{budget.flag()} is below the cheapest achievable cost{where}: "
            f"{first_costs[cheapest]:.4g} {budget.metric} per image (Pareto point "
            f"{candidates[cheapest].point.index}, every image leaving at its first exit)"
        )


def answer_budget(
    candidates: Sequence[Candidate],
    labels: np.ndarray,
    budget: Budget,
    *,
    policy: StudyPolicy | None = None,
    device: str | None = None,
    num_candidates: int = 64,
    rule: str | None = None,
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
        rule: offer only this exit rule (a confidence rule of ``RULES``, or ``learned``, which
            needs ``policy`` and configurations with two exits or more); by default each
            configuration's searched rule, and the learned one when a policy is given.

    Returns:
        The :class:`BudgetAnswer`.

    Raises:
        BudgetError: no candidates, or the budget is below the cheapest achievable cost (every
            sample at the first exit of the cheapest configuration), or nothing with ``rule``
            meets it; the message names it.
    """
    if not candidates:
        raise BudgetError("the Pareto front is empty; run exitnas search")
    if rule is not None and rule not in (*RULES, LEARNED):
        raise BudgetError(f"exit rule {rule!r} is not allowed; allowed: {(*RULES, LEARNED)}")
    if rule == LEARNED and policy is None:
        raise BudgetError("the learned exit rule needs a fitted policy: run exitnas policy fit")
    labels = np.asarray(labels)
    _cheapest_first_exit(candidates, budget, device)
    best: _Option | None = None
    options = 0
    for candidate in candidates:
        if budget.value < candidate.stage_cost(budget.metric)[0] * (1 - 1e-12):
            continue
        for option in _options(candidate, labels, budget, policy, rule, num_candidates):
            options += option.calibrated
            if best is None or option.key > best.key:
                best = option
    if best is None:  # without ``rule``, the cheapest candidate's first exit always fits
        raise BudgetError(
            f"no Pareto configuration meets {budget.flag()} with the {rule} exit rule"
            + (" (it needs two exits or more)" if rule == LEARNED else "")
        )
    return _answer(best, budget, device, labels, options)


def _answer(
    best: _Option, budget: Budget, device: str | None, labels: np.ndarray, options: int
) -> BudgetAnswer:
    """The answer of the chosen option: its deployed figures, and out-of-fold ones for the
    learned rule."""
    chosen, exit_rule, taken = best.candidate, best.rule, best.taken
    correct = chosen.logits.argmax(axis=-1) == labels[None, :]
    cumulative_flops = np.cumsum(chosen.point.stage_flops)
    flops = score_exits(taken, correct, cumulative_flops)
    estimate = score_exits(best.estimated, correct, cumulative_flops)
    latency_ms, stage_ms = None, None
    if chosen.stage_ms is not None:
        stage_ms = chosen.stage_cost("ms", exit_rule.rule)
        latency_ms = expected_cost(taken, np.cumsum(stage_ms))
    return BudgetAnswer(
        budget=budget,
        device=device,
        point=chosen.point,
        rule=exit_rule,
        accuracy=flops.accuracy,
        mflops=flops.expected_flops / 1e6,
        latency_ms=latency_ms,
        exit_fractions=flops.exit_fractions,
        stage_ms=None if stage_ms is None else tuple(float(m) for m in stage_ms),
        latency_source=_source(chosen.stage_ms_measured),
        options=options,
        out_of_fold=None
        if exit_rule.rule != LEARNED
        else (estimate.accuracy, estimate.expected_flops / 1e6),
    )
