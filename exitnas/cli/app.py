"""The ``exitnas`` command line.

Every error a user can cause prints one line (``exitnas: error: ...``) and exits with code 2,
without a traceback. The first Ctrl-C (or SIGTERM) stops training after the current step and
writes a checkpoint, exit code 130; a second Ctrl-C stops at once (the last checkpoint stays).
Ctrl-C during a search fails the running trial (the completed ones are kept) and prints one
line: where it stopped and how to resume; exit code 130.

Building the parser imports no torch, Optuna, SQLAlchemy, scikit-learn or plotly (each
subcommand's handler imports what it needs), so ``--help`` and a study file's mistake take a
fraction of a second.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from exitnas.cli.export import add_export_parser
from exitnas.cli.policy import add_policy_parser
from exitnas.cli.profile import add_profile_parser
from exitnas.cli.report import add_report_parser
from exitnas.cli.run import add_run_parser
from exitnas.cli.search import add_search_parser
from exitnas.cli.train import add_train_parser
from exitnas.errors import ExitnasError
from exitnas.threads import register

__all__ = ["build_parser", "main"]


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (``exitnas train: error: ...``), exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``exitnas`` parser, one subcommand per module of this package."""
    parser = _Parser(
        prog="exitnas",
        description="Search vision-transformer architectures and their early-exit policies.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_train_parser(commands)
    add_search_parser(commands)
    add_export_parser(commands)
    add_report_parser(commands)
    add_profile_parser(commands)
    add_policy_parser(commands)
    add_run_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``exitnas`` console script."""
    args = build_parser().parse_args(argv)
    if hasattr(args, "threads"):  # a command that computes: others share the CPUs with it
        register()
    try:
        return args.handler(args)
    except ExitnasError as err:
        print(f"exitnas: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("exitnas: interrupted", file=sys.stderr)
        return 130
