"""Devices: per-stage latency profiles, the latency model fitted on them, and stage costs.

A profile (:mod:`~exitnas.devices.profile`) holds measured stage latencies and the runtime's
overhead on one device; :mod:`~exitnas.devices.latency` fits a model that predicts any
configuration's stage latencies from them; :mod:`~exitnas.devices.costs` turns a profile into
per-stage milliseconds (``stage_ms``) for budgets and the latency objective. Names are imported
on first use (:mod:`exitnas._lazy`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from exitnas._lazy import lazy_exports

if TYPE_CHECKING:
    from exitnas.devices.costs import DeviceCosts, expected_ms
    from exitnas.devices.errors import ProfileError
    from exitnas.devices.latency import StageLatencyModel
    from exitnas.devices.profile import (
        DeviceProfile,
        HostInfo,
        RuntimeOverhead,
        StageFeatures,
        StageTiming,
        stage_features,
    )

__all__ = [
    "DeviceCosts",
    "DeviceProfile",
    "HostInfo",
    "ProfileError",
    "RuntimeOverhead",
    "StageFeatures",
    "StageLatencyModel",
    "StageTiming",
    "expected_ms",
    "stage_features",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "exitnas.devices.costs": ("DeviceCosts", "expected_ms"),
        "exitnas.devices.errors": ("ProfileError",),
        "exitnas.devices.latency": ("StageLatencyModel",),
        "exitnas.devices.profile": (
            "DeviceProfile",
            "HostInfo",
            "RuntimeOverhead",
            "StageFeatures",
            "StageTiming",
            "stage_features",
        ),
    },
)
