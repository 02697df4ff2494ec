"""The ``exitnas export`` subcommand: a bundle of one Pareto point, or the whole front as JSON."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import optuna

from exitnas.search.export import (
    export_bundle,
    export_front_json,
    pareto_points,
    select_point,
)
from exitnas.search.objective import file_sha256
from exitnas.search.runner import load_searched, open_run

__all__ = ["add_export_parser", "run_export"]


def add_export_parser(commands: Any) -> argparse.ArgumentParser:
    """Register ``exitnas export`` on the subparsers object ``commands``.

    Args:
        commands: what ``ArgumentParser.add_subparsers`` returned.

    Returns:
        The ``export`` parser (its handler is set as ``handler``).
    """
    export = commands.add_parser(
        "export", help="export a Pareto point as a deployable bundle, or the front as JSON"
    )
    export.add_argument(
        "--study", type=Path, required=True, help="run folder, e.g. runs/quickstart"
    )
    export.add_argument(
        "--out", type=Path, required=True, help="bundle folder (or JSON file with --pareto)"
    )
    which = export.add_mutually_exclusive_group()
    which.add_argument(
        "--select", help='constraints, e.g. "mflops<=40,accuracy>=0.9" (default: most accurate)'
    )
    which.add_argument("--pareto-index", type=int, help="point index, cheapest first")
    which.add_argument("--pareto", action="store_true", help="write the whole front as JSON")
    export.add_argument(
        "--storage", help="SQLAlchemy URL (default: the search's, sqlite:///RUN_DIR/study.db)"
    )
    export.add_argument("--data", type=Path, help="image folder or tar tree; overrides data.path")
    export.set_defaults(handler=run_export)
    return export


def run_export(args: argparse.Namespace) -> int:
    """Handler of ``exitnas export``; prints one summary line and returns 0."""
    from exitnas.supernet.train import WEIGHTS

    run = Path(args.study)
    model, study, url = open_run(run, args.storage, args.data)
    splits, optuna_study = load_searched(study, run, url)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    points = pareto_points(optuna_study, study.space)
    if args.pareto:
        export_front_json(points, args.out)
        print(f"Pareto front of {study.name!r}: {len(points)} points -> {args.out}")
        return 0
    point = select_point(points, args.select, args.pareto_index)
    weights_hash = file_sha256(run / WEIGHTS)
    export_bundle(
        point, model, study, args.out, weights_hash=weights_hash, mean=splits.mean, std=splits.std
    )
    print(
        f"exported point {point.index} of {len(points)} (trial {point.trial_number}): "
        f"accuracy {point.accuracy:.4f}, {point.mflops:.4g} MFLOPs/image -> {args.out}"
    )
    return 0
