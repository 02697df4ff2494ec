"""Exit rules and exit policies: who leaves at which exit, and what that trades.

The confidence rules (:mod:`~exitnas.exits.rules`) and the learned policy
(:mod:`~exitnas.exits.learned`, on the exit features of :mod:`~exitnas.exits.features`; stored
for a whole study by :mod:`~exitnas.exits.policy`) serve one interface
(:mod:`~exitnas.exits.scoring`); threshold calibration (:mod:`~exitnas.exits.calibrate`) and
trade-off curves (:mod:`~exitnas.exits.tradeoff`) work on any of them. Everything works on
cached per-exit logits, so no model runs here. Names are imported on first use
(:mod:`exitnas._lazy`): importing the package loads neither scikit-learn nor torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from exitnas._lazy import lazy_exports

if TYPE_CHECKING:
    from exitnas.exits.calibrate import calibrate_thresholds
    from exitnas.exits.features import FEATURES, exit_features
    from exitnas.exits.learned import LearnedExitPolicy
    from exitnas.exits.options import TARGETS, PolicyError
    from exitnas.exits.rules import RULES, ExitOutcome, ExitRule, ExitTable
    from exitnas.exits.scoring import ConfidencePolicy, ExitPolicy, exit_policy
    from exitnas.exits.tradeoff import (
        TradeoffCurve,
        TradeoffCurves,
        area_between,
        oracle_exits,
        tradeoff_curve,
    )

__all__ = [
    "FEATURES",
    "RULES",
    "TARGETS",
    "ConfidencePolicy",
    "ExitOutcome",
    "ExitPolicy",
    "ExitRule",
    "ExitTable",
    "LearnedExitPolicy",
    "PolicyError",
    "TradeoffCurve",
    "TradeoffCurves",
    "area_between",
    "calibrate_thresholds",
    "exit_features",
    "exit_policy",
    "oracle_exits",
    "tradeoff_curve",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "exitnas.exits.calibrate": ("calibrate_thresholds",),
        "exitnas.exits.features": ("FEATURES", "exit_features"),
        "exitnas.exits.learned": ("LearnedExitPolicy",),
        "exitnas.exits.options": ("TARGETS", "PolicyError"),
        "exitnas.exits.rules": ("RULES", "ExitOutcome", "ExitRule", "ExitTable"),
        "exitnas.exits.scoring": ("ConfidencePolicy", "ExitPolicy", "exit_policy"),
        "exitnas.exits.tradeoff": (
            "TradeoffCurve",
            "TradeoffCurves",
            "area_between",
            "oracle_exits",
            "tradeoff_curve",
        ),
    },
)
