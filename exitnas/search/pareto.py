"""Pareto fronts and hypervolume of (accuracy up, cost down) points."""

from __future__ import annotations

import numpy as np

__all__ = ["hypervolume_2d", "pareto_mask"]


def pareto_mask(accuracy: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """Points no other point beats: at least as accurate and as cheap, better in one.

    Duplicated points are all kept.
    """
    accuracy, cost = np.asarray(accuracy, float), np.asarray(cost, float)
    order = np.lexsort((-accuracy, cost))  # cheapest first, most accurate first among ties
    mask = np.zeros(len(cost), dtype=bool)
    best, best_cost = -np.inf, None
    for i in order:
        if accuracy[i] > best or (accuracy[i] == best and cost[i] == best_cost):
            mask[i] = True
            best, best_cost = accuracy[i], cost[i]
    return mask


def hypervolume_2d(accuracy: np.ndarray, cost: np.ndarray, reference_cost: float) -> float:
    """Area dominated by the points between accuracy 0 and cost ``reference_cost``.

    Measured in accuracy x cost units; points at or beyond the reference cost add nothing.
    """
    accuracy, cost = np.asarray(accuracy, float), np.asarray(cost, float)
    keep = pareto_mask(accuracy, cost) & (cost < reference_cost)
    area, previous = 0.0, 0.0
    for c, a in sorted(zip(cost[keep], accuracy[keep], strict=True)):  # cheapest first
        if a > previous:
            area += (reference_cost - c) * (a - previous)
            previous = a
    return float(area)
