"""Reports of a searched study: compute plain info objects, then draw them with plotly."""

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
from exitnas.reports.tradeoff import TradeoffInfo, tradeoff_info

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
