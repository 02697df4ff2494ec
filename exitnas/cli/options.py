"""Options and argparse value types shared by the subcommands (each declared once here)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from exitnas.runs import Run

__all__ = [
    "add_data_argument",
    "add_quiet_argument",
    "add_run_arguments",
    "add_storage_argument",
    "add_threads_argument",
    "at_least",
    "open_run",
]


def at_least(minimum: int) -> Callable[[str], int]:
    """An argparse ``type`` accepting integers of at least ``minimum``."""

    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def add_threads_argument(parser: argparse.ArgumentParser, study_field: bool = True) -> None:
    """``--threads N``: torch's intra-op threads of a command that computes (exitnas.threads).

    Args:
        study_field: the command reads a study file, whose ``training.num_threads`` comes
            second (after ``--threads``).
    """
    after = "training.num_threads, then " if study_field else ""
    parser.add_argument(
        "--threads",
        type=at_least(1),
        metavar="N",
        help=f"torch threads of each process (default: {after}OMP_NUM_THREADS, else this "
        "machine's CPUs shared among the running exitnas processes)",
    )


def add_data_argument(parser: argparse.ArgumentParser) -> None:
    """``--data PATH``: where the study's images live now (overrides ``data.path``)."""
    parser.add_argument(
        "--data",
        type=Path,
        metavar="PATH",
        help="image folder or tar tree (class-per-folder); overrides data.path",
    )


def add_storage_argument(parser: argparse.ArgumentParser) -> None:
    """``--storage URL``: the database of the searched study."""
    parser.add_argument(
        "--storage",
        metavar="URL",
        help="SQLAlchemy URL (default: the study's search.storage, else "
        "sqlite:///RUN_DIR/study.db)",
    )


def add_quiet_argument(parser: argparse.ArgumentParser) -> None:
    """``--quiet``: no progress bars."""
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def add_run_arguments(parser: argparse.ArgumentParser, positional: bool = False) -> None:
    """``--study RUN_DIR``, ``--storage``, ``--data`` and ``--quiet`` of a command on a trained
    run folder (export, report, profile, policy); :func:`open_run` opens what they name.

    Args:
        positional: the run folder is the positional ``run_dir`` (``exitnas report``).
    """
    where = "run folder written by exitnas train, e.g. runs/quickstart"
    if positional:
        parser.add_argument("study", type=Path, metavar="run_dir", help=where)
    else:
        parser.add_argument("--study", type=Path, required=True, metavar="RUN_DIR", help=where)
    add_storage_argument(parser)
    add_data_argument(parser)
    add_quiet_argument(parser)


def open_run(args: argparse.Namespace) -> Run:
    """The run folder :func:`add_run_arguments`' options name, opened (nothing loaded yet)."""
    from exitnas.runs import Run

    return Run.open(args.study, args.storage, args.data, progress=not args.quiet)
