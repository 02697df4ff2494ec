"""The ``exitnas export`` subcommand: a bundle of one Pareto point, or the whole front as JSON."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy as sa

from exitnas.errors import CheckpointError
from exitnas.search.export import (
    ExportError,
    export_bundle,
    export_front_json,
    pareto_points,
    select_point,
)
from exitnas.search.objective import file_sha256
from exitnas.search.storage import default_storage_url, open_storage
from exitnas.spaces import StudyConfig

__all__ = ["add_export_parser", "load_searched_study"]


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


def load_searched_study(study: StudyConfig, url: str) -> optuna.Study:
    """Load (never create) the Optuna study of ``study`` from ``url``.

    Raises:
        ExportError: no such study (or no such SQLite file).
        CheckpointError: the stored study was searched for another study file.
    """
    missing = f"no study named {study.name!r} in {url}; run exitnas search"
    if url.startswith("sqlite"):
        database = sa.engine.make_url(url).database
        if database and database != ":memory:" and not Path(database).is_file():
            raise ExportError(missing)
    try:
        optuna_study = optuna.load_study(study_name=study.name, storage=open_storage(url))
    except KeyError:
        raise ExportError(missing) from None
    key = optuna_study.user_attrs.get("exitnas_study_key")
    if key is not None and key != study.key():
        raise CheckpointError(
            f"study {study.name!r} in {url} was searched for another study file (key {key})"
        )
    return optuna_study


def run_export(args: argparse.Namespace) -> int:
    """Handler of ``exitnas export``; prints one summary line and returns 0."""
    from exitnas.data import load_splits
    from exitnas.supernet import load_supernet
    from exitnas.supernet.train import WEIGHTS

    run = Path(args.study)
    model, study = load_supernet(run)
    if args.data is not None:
        study = replace(study, data=replace(study.data, path=str(args.data)))
    url = args.storage or study.search.storage or default_storage_url(run)
    optuna_study = load_searched_study(study, url)
    weights_hash = file_sha256(run / WEIGHTS)
    searched_with = optuna_study.user_attrs.get("weights_hash")
    if searched_with is not None and searched_with != weights_hash:
        raise CheckpointError(
            f"study {study.name!r} in {url} was searched with other supernet weights than "
            f"{run / WEIGHTS}; search again"
        )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    points = pareto_points(optuna_study, study.space, study.search.rules)
    if args.pareto:
        export_front_json(points, args.out)
        print(f"Pareto front of {study.name!r}: {len(points)} points -> {args.out}")
        return 0
    point = select_point(points, args.select, args.pareto_index)
    data = study.data
    splits = load_splits(
        data.dataset,
        data.path,
        data.image_size,
        data.val_fraction,
        study.seed,
        download=data.download,
    )
    export_bundle(
        point, model, study, args.out, weights_hash=weights_hash, mean=splits.mean, std=splits.std
    )
    print(
        f"exported point {point.index} of {len(points)} (trial {point.trial_number}): "
        f"accuracy {point.accuracy:.4f}, {point.mflops:.4g} MFLOPs/image -> {args.out}"
    )
    return 0
