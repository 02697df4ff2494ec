"""argparse value types shared by the subcommands."""

from __future__ import annotations

import argparse
from collections.abc import Callable

__all__ = ["add_threads_argument", "at_least"]


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
