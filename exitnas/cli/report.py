"""``exitnas report RUN_DIR``: the HTML report of a run's searched study.

Registered on the main parser by :func:`add_report_parser`; the handler returns the exit code
and raises :class:`~exitnas.errors.ExitnasError` subclasses for anything the user can fix.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from exitnas.cli.options import add_run_arguments, add_threads_argument, open_run
from exitnas.threads import use_threads

__all__ = ["add_report_parser"]


def _report(args: argparse.Namespace) -> int:
    from exitnas.reports.info import ReportError, build_report_info
    from exitnas.reports.plot import write_report

    use_threads(args.threads)
    run = open_run(args)
    info = build_report_info(run.searched(), run.study, run.evaluator, args.pareto_index)
    out = Path(args.out) if args.out else run.path / "report.html"
    if out.suffix.lower() != ".html" or (out.exists() and not out.is_file()):
        raise ReportError(f"--out: {out} must be an .html file (a report is regenerated there)")
    path = write_report(info, out)
    print(path)
    return 0


def add_report_parser(commands: Any) -> argparse.ArgumentParser:
    """Register ``exitnas report`` on the main parser's subcommands.

    Args:
        commands: what ``ArgumentParser.add_subparsers`` returned.

    Returns:
        The ``report`` parser (its handler is set as ``handler``).
    """
    report = commands.add_parser(
        "report", help="HTML report of a searched study (Pareto front, exits, trade-offs)"
    )
    add_run_arguments(report, positional=True)
    report.add_argument("--out", type=Path, help="HTML file (default: RUN_DIR/report.html)")
    report.add_argument(
        "--pareto-index",
        type=int,
        help="Pareto point (0 = cheapest) whose threshold trade-off is drawn; default: most "
        "accurate",
    )
    add_threads_argument(report, study_field=False)
    report.set_defaults(handler=_report)
    return report
