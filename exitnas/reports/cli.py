"""``exitnas report RUN_DIR``: the HTML report of a run's searched study.

Registered on the main parser by :func:`add_report_parser`; the handler returns the exit code
and raises :class:`~exitnas.errors.ExitnasError` subclasses for anything the user can fix.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Any

from exitnas.reports.info import ReportError

__all__ = ["add_report_parser", "load_optuna_study"]


def load_optuna_study(name: str, url: str, study_key: str | None = None) -> Any:
    """Load the Optuna study ``name`` from ``url``.

    Args:
        name: the study's name (the study file's ``name``).
        url: SQLAlchemy storage URL.
        study_key: if given, the study must have been searched for a study file with this key.

    Returns:
        The ``optuna.Study``.

    Raises:
        ReportError: no such study in ``url``, or it belongs to another study file.
        StorageError: ``url`` cannot be opened.
    """
    import optuna

    from exitnas.search.storage import open_storage

    try:
        optuna_study = optuna.load_study(study_name=name, storage=open_storage(url))
    except KeyError:
        raise ReportError(f"no study named {name!r} in {url}; run exitnas search") from None
    recorded = optuna_study.user_attrs.get("exitnas_study_key")
    if study_key is not None and recorded is not None and recorded != study_key:
        raise ReportError(
            f"study {name!r} in {url} was searched for another study file (key {recorded})"
        )
    return optuna_study


def _report(args: argparse.Namespace) -> int:
    from exitnas.reports.info import build_report_info
    from exitnas.reports.plot import write_report
    from exitnas.search.runner import load_evaluator
    from exitnas.search.storage import default_storage_url
    from exitnas.supernet import load_supernet

    run = Path(args.run_dir)
    _, study = load_supernet(run)
    if args.data is not None:
        study = replace(study, data=replace(study.data, path=str(args.data)))
    url = args.storage or default_storage_url(run)
    optuna_study = load_optuna_study(study.name, url, study.key())
    evaluator = load_evaluator(study, run, url)
    info = build_report_info(optuna_study, study, evaluator, args.pareto_index)
    path = write_report(info, Path(args.out) if args.out else run / "report.html")
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
    report.add_argument("run_dir", type=Path, help="run folder, e.g. runs/quickstart")
    report.add_argument("--storage", help="SQLAlchemy URL (default: sqlite:///RUN_DIR/study.db)")
    report.add_argument("--out", type=Path, help="HTML file (default: RUN_DIR/report.html)")
    report.add_argument(
        "--pareto-index",
        type=int,
        help="Pareto point (0 = cheapest) whose threshold trade-off is drawn; default: most "
        "accurate",
    )
    report.add_argument("--data", type=Path, help="image folder or tar tree; overrides data.path")
    report.set_defaults(handler=_report)
    return report
