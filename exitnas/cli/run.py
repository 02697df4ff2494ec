"""``exitnas run STUDY``: the whole job for one study file (:mod:`exitnas.jobs.pipeline`).

Example:
    exitnas run studies/quickstart.yaml
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from exitnas.cli.options import (
    add_data_argument,
    add_quiet_argument,
    add_threads_argument,
    at_least,
)
from exitnas.cli.policy import add_rule_argument
from exitnas.jobs.pipeline import LOCAL_DEVICE, run_pipeline

__all__ = ["add_run_parser"]


def _run(args: argparse.Namespace) -> int:
    from exitnas.spaces import load_study

    study = load_study(args.study).with_overrides(num_threads=args.threads)  # before torch

    from exitnas.jobs.profile import ProfileSettings
    from exitnas.search.interrupts import SearchInterrupted
    from exitnas.supernet import TrainingInterrupted

    study = study.with_data_path(args.data)
    run = Path(args.out) if args.out else Path("runs") / study.name
    started = time.perf_counter()
    repeats = args.profile_repeats
    try:
        summary = run_pipeline(
            study,
            run,
            device=args.device,
            trials=args.trials,
            profile_settings=ProfileSettings(repeats=repeats, passes=min(10, repeats)),
            progress=not args.quiet,
            rule=args.rule,
        )
    except (TrainingInterrupted, SearchInterrupted) as stop:  # training checkpointed, or
        # the search's completed trials kept: the same command continues towards its target
        print(f"exitnas: {stop}; run the same command again to resume", file=sys.stderr)
        return 130
    print(summary.table())
    print(f"exitnas run: done in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return 0


def add_run_parser(commands: Any) -> argparse.ArgumentParser:
    """Register ``exitnas run`` on the main parser's subcommands."""
    run = commands.add_parser(
        "run",
        help="the whole job: train, search, profile, fit the policy, export, report",
    )
    run.add_argument("study", type=Path, help="study YAML file, e.g. studies/quickstart.yaml")
    add_data_argument(run)
    run.add_argument("--out", type=Path, help="run folder (default: runs/<study name>)")
    run.add_argument(
        "--device",
        default=LOCAL_DEVICE,
        metavar="NAME",
        help=f"name of this machine's device profile (default {LOCAL_DEVICE})",
    )
    run.add_argument(
        "--trials",
        type=at_least(1),
        help="completed trials the study should hold (default: search.trials)",
    )
    run.add_argument(
        "--profile-repeats",
        type=at_least(1),
        default=20,
        metavar="N",
        help="timed runs per stage when profiling this machine (default 20; exitnas profile "
        "measures more carefully)",
    )
    add_threads_argument(run)
    add_rule_argument(run)
    add_quiet_argument(run)
    run.set_defaults(handler=_run)
    return run
