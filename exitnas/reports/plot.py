"""Drawing a :class:`~exitnas.reports.info.ReportInfo` as one self-contained HTML file.

The HTML embeds plotly.js once, inline, so the file opens offline; plotly is imported only
when a report is drawn.

Example:
    >>> info = build_report_info(optuna_study, study_cfg, evaluator)
    >>> write_report(info, "runs/quickstart/report.html")
"""

from __future__ import annotations

import html
import os
import tempfile
from pathlib import Path

from exitnas.reports.figures import (
    TITLES,
    exit_distribution_figure,
    hypervolume_figure,
    pareto_figure,
    tradeoff_figure,
)
from exitnas.reports.info import ReportInfo

__all__ = ["draw_report", "write_report"]


def draw_report(info: ReportInfo) -> str:
    """The full report as one self-contained HTML page.

    Args:
        info: what to draw (:func:`~exitnas.reports.info.build_report_info`).

    Returns:
        HTML text with the four figures; plotly.js is inlined once.
    """
    import plotly.io as pio

    figures = [
        pareto_figure(info.pareto),
        hypervolume_figure(info.hypervolume),
        exit_distribution_figure(info.exits),
        tradeoff_figure(info.tradeoff),
    ]
    divs = [  # fixed ids: the same info gives the same file
        pio.to_html(fig, full_html=False, include_plotlyjs=i == 0, div_id=f"{key}-figure")
        for i, (key, fig) in enumerate(zip(TITLES, figures, strict=True))
    ]
    front = sum(info.pareto.front)
    final = info.hypervolume.hypervolume[-1] if info.hypervolume.hypervolume else 0.0
    name = html.escape(info.study_name)
    summary = (
        f"{len(info.pareto.trial_numbers)} completed trials, {front} points on the Pareto front, "
        f"hypervolume {final:.4f}"
    )
    body = "\n".join(f"<section>{div}</section>" for div in divs)
    return (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
        f"<title>exitnas report: {name}</title>"
        "<style>body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em}"
        "section{margin-bottom:1.5em}</style></head>\n"
        f"<body><h1>exitnas report: {name}</h1><p>{summary}</p>\n{body}\n</body></html>\n"
    )


def write_report(info: ReportInfo, path: str | Path) -> Path:
    """Draw ``info`` and write it to ``path`` atomically, replacing any earlier report.

    Args:
        info: what to draw.
        path: the HTML file; its folder is created if missing.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = draw_report(info)
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644  # mkstemp would give 0o600
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(temp, mode)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path
