"""Exit policies, device profiles and latency models.

A learned exit policy and the oracle on cached per-exit logits, trade-off curves, per-stage
latency profiles of a device, and a latency model fitted on them. Names are imported on first
use (:mod:`exitnas._lazy`): importing the package, or its command-line modules, loads neither
scikit-learn nor torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from exitnas._lazy import lazy_exports

if TYPE_CHECKING:
    from exitnas.policies.latency import StageLatencyModel
    from exitnas.policies.learned import (
        FEATURES,
        TARGETS,
        LearnedExitPolicy,
        calibrate_thresholds,
        exit_features,
    )
    from exitnas.policies.profile import (
        DeviceProfile,
        HostInfo,
        ProfileError,
        StageFeatures,
        StageTiming,
        measure_stage_latencies,
        stage_features,
    )
    from exitnas.policies.tradeoff import (
        TradeoffCurve,
        TradeoffCurves,
        area_between,
        oracle_exits,
        tradeoff_curve,
    )

__all__ = [
    "FEATURES",
    "TARGETS",
    "DeviceProfile",
    "HostInfo",
    "LearnedExitPolicy",
    "ProfileError",
    "StageFeatures",
    "StageLatencyModel",
    "StageTiming",
    "TradeoffCurve",
    "TradeoffCurves",
    "area_between",
    "calibrate_thresholds",
    "exit_features",
    "measure_stage_latencies",
    "oracle_exits",
    "stage_features",
    "tradeoff_curve",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "exitnas.policies.latency": ("StageLatencyModel",),
        "exitnas.policies.learned": (
            "FEATURES",
            "LearnedExitPolicy",
            "calibrate_thresholds",
            "exit_features",
        ),
        "exitnas.policies.options": ("TARGETS", "ProfileError"),
        "exitnas.policies.profile": (
            "DeviceProfile",
            "HostInfo",
            "StageFeatures",
            "StageTiming",
            "measure_stage_latencies",
            "stage_features",
        ),
        "exitnas.policies.tradeoff": (
            "TradeoffCurve",
            "TradeoffCurves",
            "area_between",
            "oracle_exits",
            "tradeoff_curve",
        ),
    },
)
