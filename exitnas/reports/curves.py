"""The threshold trade-off of one architecture: its thresholds swept from 0 to 1.

Thresholds move together along one scalar ``s``: at ``s = 0`` every sample leaves at the first
exit, at ``s = 0.5`` the thresholds are the searched point's own, at ``s = 1`` every sample
goes to the last exit. Scored on the architecture's cached logits, so a sweep costs
milliseconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from exitnas.exits.rules import ExitRule, ExitTable, exit_indices

__all__ = ["TradeoffInfo", "sweep_thresholds", "tradeoff_info"]


@dataclass(frozen=True)
class TradeoffInfo:
    """Accuracy and cost of one Pareto point's architecture as its thresholds sweep.

    ``s = 0``: every threshold 0, everything leaves at the first exit; ``s = 0.5``: the point's
    own thresholds; ``s = 1``: no exit but the last takes anything.
    """

    trial_number: int
    rule: str
    thresholds: tuple[float, ...]  # the point's own thresholds (at s = 0.5)
    s: tuple[float, ...]
    accuracy: tuple[float, ...]
    mflops: tuple[float, ...]
    operating_index: int  # index of s = 0.5, the point's own operating point
    deployed: bool = False  # the operating point is the exported bundle's (rule, thresholds)


def sweep_thresholds(thresholds: Sequence[float], s: float) -> np.ndarray:
    """Thresholds at sweep position ``s``: 0 at 0, ``thresholds`` at 0.5, 1 at 1 (inf at 1)."""
    own = np.asarray(thresholds, dtype=np.float64)
    own = np.where(np.isinf(own), np.nextafter(1.0, 2.0), own)  # "never": just above 1
    if s >= 1.0:
        return np.full_like(own, np.inf)  # above every confidence, even a certain one
    if s <= 0.5:
        return own * (s / 0.5)
    return own + (1.0 - own) * ((s - 0.5) / 0.5)


def tradeoff_info(
    table: ExitTable,
    rule: ExitRule,
    trial_number: int,
    steps: int = 41,
    scores: np.ndarray | None = None,
) -> TradeoffInfo:
    """Sweep one architecture's thresholds from "all exit first" to "all go to the last exit".

    Args:
        table: the architecture's cached logits (``ArchitectureEvaluator.table``).
        rule: the point's own exit rule (its thresholds sit at ``s = 0.5``).
        trial_number: the point's trial.
        steps: sweep positions, odd so that ``s = 0.5`` is one of them.
        scores: ``(E, N)`` exit scores the thresholds apply to; the table's confidences of
            ``rule.rule`` by default (a learned rule has no confidence there: pass its
            policy's scores).

    Returns:
        Accuracy and expected MFLOPs at every ``s``.
    """
    if steps < 3 or steps % 2 == 0:
        raise ValueError(f"steps: {steps} must be odd and at least 3")
    s_values = np.arange(steps) / (steps - 1)  # exactly 0.5 in the middle
    conf = table.confidence(rule.rule) if scores is None else np.asarray(scores)
    samples = np.arange(table.num_samples)
    accuracy, mflops = [], []
    for s in s_values:
        taken = exit_indices(conf, sweep_thresholds(rule.thresholds, float(s)))
        accuracy.append(float(table.correct[taken, samples].mean()))
        mflops.append(float(table.cumulative_flops[taken].mean()) / 1e6)
    return TradeoffInfo(
        trial_number=trial_number,
        rule=rule.rule,
        thresholds=tuple(rule.thresholds),
        s=tuple(s_values.tolist()),
        accuracy=tuple(accuracy),
        mflops=tuple(mflops),
        operating_index=steps // 2,
    )
