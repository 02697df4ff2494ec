"""Reports of a searched study: compute plain info objects, then draw them with plotly.

Names are imported on first use (:mod:`exitnas._lazy`): importing the package, or its
command-line module, loads neither Optuna nor plotly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from exitnas._lazy import lazy_exports

if TYPE_CHECKING:
    from exitnas.reports.curves import TradeoffInfo, tradeoff_info
    from exitnas.reports.info import (
        ExitDistributionInfo,
        ExitPoint,
        HypervolumeInfo,
        ParetoInfo,
        ReportError,
        ReportInfo,
        build_report_info,
        exit_distribution_info,
        hypervolume_info,
        pareto_info,
    )
    from exitnas.reports.plot import draw_report, write_report

__all__ = [
    "ExitDistributionInfo",
    "ExitPoint",
    "HypervolumeInfo",
    "ParetoInfo",
    "ReportError",
    "ReportInfo",
    "TradeoffInfo",
    "build_report_info",
    "draw_report",
    "exit_distribution_info",
    "hypervolume_info",
    "pareto_info",
    "tradeoff_info",
    "write_report",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "exitnas.reports.info": (
            "ExitDistributionInfo",
            "ExitPoint",
            "HypervolumeInfo",
            "ParetoInfo",
            "ReportError",
            "ReportInfo",
            "build_report_info",
            "exit_distribution_info",
            "hypervolume_info",
            "pareto_info",
        ),
        "exitnas.reports.plot": ("draw_report", "write_report"),
        "exitnas.reports.curves": ("TradeoffInfo", "tradeoff_info"),
    },
)
