"""What a report shows, computed from an Optuna study: plain frozen data, no plotting.

:func:`build_report_info` returns a :class:`ReportInfo`; :mod:`exitnas.reports.plot` only
draws it, and tests assert on it.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import optuna

from exitnas.errors import ExitnasError
from exitnas.exits.rules import LEARNED, ExitRule
from exitnas.reports.curves import TradeoffInfo, tradeoff_info
from exitnas.search.encoding import trial_config
from exitnas.search.front import front_trials, pareto_points
from exitnas.search.objective import ArchitectureEvaluator
from exitnas.search.runner import reference_mflops
from exitnas.search.studies import OBJECTIVES
from exitnas.spaces import SearchSpace, StudyConfig, SubnetConfig

if TYPE_CHECKING:
    from exitnas.exits.policy import StudyPolicy

__all__ = [
    "ExitDistributionInfo",
    "ExitPoint",
    "HypervolumeInfo",
    "ParetoInfo",
    "ReportError",
    "ReportInfo",
    "build_report_info",
    "exit_distribution_info",
    "exit_labels",
    "hypervolume_info",
    "pareto_info",
]


class ReportError(ExitnasError):
    """A study that cannot be reported: missing, empty, or a bad Pareto point index."""


@dataclass(frozen=True)
class ParetoInfo:
    """Every completed trial and which of them form the (accuracy up, MFLOPs down) front."""

    trial_numbers: tuple[int, ...]  # completed trials, in trial-number order
    accuracy: tuple[float, ...]
    mflops: tuple[float, ...]  # expected MFLOPs per image
    front: tuple[bool, ...]  # stands for a point of the Pareto front (``front_trials``)
    latency_ms: tuple[float, ...] | None = None  # expected latency, when trials carry it


@dataclass(frozen=True)
class HypervolumeInfo:
    """Hypervolume of the trials so far, after each completed trial."""

    trial_numbers: tuple[int, ...]
    hypervolume: tuple[float, ...]  # accuracy x MFLOPs dominated below the reference cost
    reference_mflops: float


@dataclass(frozen=True)
class ExitPoint:
    """One Pareto point's exits and the share of validation samples leaving at each."""

    trial_number: int
    accuracy: float
    mflops: float
    exit_fractions: tuple[float, ...]  # sums to 1
    exit_labels: tuple[str, ...]  # "b0/l2 mixer": branch, backbone layer, head type


@dataclass(frozen=True)
class ExitDistributionInfo:
    """Where the samples of every Pareto point leave."""

    points: tuple[ExitPoint, ...]  # the Pareto front, cheapest first


@dataclass(frozen=True)
class ReportInfo:
    study_name: str
    pareto: ParetoInfo
    hypervolume: HypervolumeInfo
    exits: ExitDistributionInfo
    tradeoff: TradeoffInfo


def _complete(optuna_study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    trials = optuna_study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return sorted(trials, key=lambda t: t.number)


def pareto_info(optuna_study: optuna.Study, space: SearchSpace | None = None) -> ParetoInfo:
    """Completed trials' objectives and which of them stand for the Pareto front's points.

    Args:
        optuna_study: a study searched by ``exitnas search``.
        space: its search space (points told apart by their reachable configuration).

    Returns:
        The trials in trial-number order; ``latency_ms`` when the study has that objective.
        ``front`` marks the trials of :func:`~exitnas.search.front.front_trials`, one per
        distinct point (a point sampled again is not counted twice), so ``sum(front)`` is the
        number of points in the front JSON and in ``exitnas run``'s table.
    """
    trials = _complete(optuna_study)
    names = list(optuna_study.user_attrs.get("objectives", OBJECTIVES))
    values = np.array([t.values for t in trials], dtype=float).reshape(len(trials), -1)
    accuracy, mflops = values[:, names.index("accuracy")], values[:, names.index("mflops")]
    latency = values[:, names.index("latency_ms")] if "latency_ms" in names else None
    front = {t.number for t in front_trials(optuna_study, space)} if trials else set()
    return ParetoInfo(
        trial_numbers=tuple(t.number for t in trials),
        accuracy=tuple(accuracy.tolist()),
        mflops=tuple(mflops.tolist()),
        front=tuple(t.number in front for t in trials),
        latency_ms=None if latency is None else tuple(latency.tolist()),
    )


def hypervolume_info(pareto: ParetoInfo, reference: float) -> HypervolumeInfo:
    """Hypervolume after each trial, keeping the front up to date in O(n x front).

    Args:
        pareto: the study's trials (:func:`pareto_info`).
        reference: the reference cost in MFLOPs (``reference_mflops``).

    Returns:
        One value per trial, equal to ``hypervolume_2d`` of the trials up to it.
    """
    costs: list[float] = []  # the current front, cheapest first; both strictly rising
    accs: list[float] = []
    history, area = [], 0.0
    for a, c in zip(pareto.accuracy, pareto.mflops, strict=True):
        cheaper = bisect.bisect_right(costs, c)  # front points at most as costly as (a, c)
        if c < reference and not (cheaper and accs[cheaper - 1] >= a):
            left = right = bisect.bisect_left(costs, c)  # drop the points (a, c) dominates
            while right < len(costs) and accs[right] <= a:
                right += 1
            costs[left:right], accs[left:right] = [c], [a]
            area, previous = 0.0, 0.0
            for cost, acc in zip(costs, accs, strict=True):  # as hypervolume_2d sums it
                if acc > previous:
                    area += (reference - cost) * (acc - previous)
                    previous = acc
        history.append(float(area))
    return HypervolumeInfo(pareto.trial_numbers, tuple(history), float(reference))


def exit_labels(config: SubnetConfig) -> tuple[str, ...]:
    """``("b0/l2 mixer", "b1/l4 mlp")``: each exit's branch, layer and head type."""
    return tuple(f"b{b}/l{exit_.layer} {exit_.head}" for b, exit_ in config.exits)


def exit_distribution_info(
    optuna_study: optuna.Study, study_cfg: StudyConfig
) -> ExitDistributionInfo:
    """Exit fractions and exit labels of every Pareto point, cheapest first.

    The points are :func:`~exitnas.search.front.pareto_points` (one per distinct parameter
    set), so a report's point index is ``exitnas export --pareto-index``'s.

    Args:
        optuna_study: the searched study.
        study_cfg: the study file (its search space).

    Returns:
        One :class:`ExitPoint` per front point.
    """
    points = [
        ExitPoint(p.trial_number, p.accuracy, p.mflops, p.exit_fractions, exit_labels(p.config))
        for p in pareto_points(optuna_study, study_cfg.space)
    ]
    return ExitDistributionInfo(tuple(points))


def build_report_info(
    optuna_study: optuna.Study,
    study_cfg: StudyConfig,
    evaluator: ArchitectureEvaluator,
    chosen_index: int | None = None,
    chosen_rule: ExitRule | None = None,
    policy: StudyPolicy | None = None,
) -> ReportInfo:
    """Everything a report shows, from a searched study.

    Args:
        optuna_study: the study ``exitnas search`` filled.
        study_cfg: its study file (search space, reference cost).
        evaluator: gives the chosen point's cached logits (``load_evaluator``).
        chosen_index: Pareto point (cheapest first) whose trade-off curve is drawn; the most
            accurate one by default.
        chosen_rule: the chosen point's exit rule as deployed (a budget query's calibrated
            thresholds): the trade-off sweeps its scores and marks it as deployed. The point's
            search-time rule by default.
        policy: the learned policy a ``learned`` ``chosen_rule`` runs (its deployed scores are
            swept); required with one.

    Returns:
        A :class:`ReportInfo`.

    Raises:
        ReportError: the study has no completed trial, or ``chosen_index`` is out of range.
    """
    pareto = pareto_info(optuna_study, study_cfg.space)
    if not pareto.trial_numbers:
        raise ReportError(f"study {optuna_study.study_name!r} has no completed trials yet")
    exits = exit_distribution_info(optuna_study, study_cfg)
    points = exits.points
    if chosen_index is None:  # the most accurate point; the cheapest of equally accurate ones
        chosen_index = max(range(len(points)), key=lambda i: points[i].accuracy)
    if not 0 <= chosen_index < len(points):
        last = len(points) - 1
        raise ReportError(f"Pareto index {chosen_index}: the front has points 0 to {last}")
    number = points[chosen_index].trial_number
    trial = next(t for t in _complete(optuna_study) if t.number == number)
    config, rule = trial_config(trial, study_cfg.space)
    table, _ = evaluator.table(config)
    scores = None
    if chosen_rule is not None:
        rule = chosen_rule
        if rule.rule == LEARNED:
            if policy is None:
                raise ValueError("a learned chosen_rule needs the policy it runs")
            scores = policy.scores(evaluator.logits(config)[0])
    tradeoff = tradeoff_info(table, rule, trial.number, scores=scores)
    if chosen_rule is not None:
        tradeoff = replace(tradeoff, deployed=True)
    return ReportInfo(
        study_name=optuna_study.study_name,
        pareto=pareto,
        hypervolume=hypervolume_info(pareto, reference_mflops(study_cfg)),
        exits=exits,
        tradeoff=tradeoff,
    )
