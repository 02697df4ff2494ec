"""``exitnas search STUDY``: add trials to a run's multi-objective search.

Trials run in processes on the study's database (``--backend optuna``, the default; several
with ``--workers``, or one command per host with ``--until``) or as Ray Tune trials
(``--backend ray``), through :func:`~exitnas.search.runner.run_search`. Ctrl-C fails the
running trial, keeps the completed ones and says how to resume (exit code 130).

Example:
    exitnas search studies/quickstart.yaml --trials 50 --workers 2
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from exitnas.cli.options import (
    add_data_argument,
    add_quiet_argument,
    add_storage_argument,
    add_threads_argument,
    at_least,
)
from exitnas.errors import ExitnasError
from exitnas.spaces.study import SAMPLERS

__all__ = ["add_search_parser"]


def _search(args: argparse.Namespace) -> int:
    from exitnas.spaces import load_study

    study = load_study(args.study).with_data_path(args.data)
    study = study.with_overrides(num_threads=args.threads)  # fast: no torch

    import optuna

    from exitnas.search import SearchInterrupted, run_search

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the progress bar reports trials
    if args.sampler:
        study = replace(study, search=replace(study.search, sampler=args.sampler))
    run = Path(args.run) if args.run else Path("runs") / study.name
    try:
        summary = run_search(
            study,
            run,
            backend=args.backend,
            trials=args.trials,
            until=args.until,
            storage=args.storage,
            workers=args.workers,
            device=args.device,
            address=args.ray_address if args.backend == "ray" else None,  # ray only
            progress=not args.quiet,
        )
    except SearchInterrupted as stop:
        print(f"exitnas: {stop}; {_resume_hint(args, stop.target)}", file=sys.stderr)
        return 130
    print(
        f"study {summary.study_name!r} in {summary.storage}: +{summary.trials_added} trials "
        f"({summary.trials_complete} complete) in {summary.seconds:.1f} s; "
        f"{summary.pareto_size} points on the Pareto front, hypervolume "
        f"{summary.hypervolume:.2f}; architectures "
        f"cached {summary.cache_hits}, evaluated {summary.cache_misses} "
        f"({summary.seconds_per_miss:.3f} s each)"
    )
    if summary.workers_lost:
        print(
            f"{summary.workers_lost} worker(s) died; their running trials were failed and "
            "queued again for the others",
            file=sys.stderr,
        )
    if summary.trials_complete < summary.target:
        raise ExitnasError(
            f"the study holds {summary.trials_complete} of {summary.target} completed trials "
            "(workers died): run the command again to finish"
        )
    return 0


def _resume_hint(args: argparse.Namespace, target: int) -> str:
    """How to finish an interrupted ``exitnas search`` (``--trials`` adds trials anew)."""
    if args.until is not None:
        return "run the same command again to resume"
    instead = " instead of --trials" if args.trials is not None else ""
    return f"run it again with --until {target}{instead} to resume"


def add_search_parser(commands: Any) -> argparse.ArgumentParser:
    """Register ``exitnas search`` on the main parser's subcommands."""
    search = commands.add_parser(
        "search", help="multi-objective search over sub-networks and exit thresholds"
    )
    search.add_argument("study", type=Path, help="study YAML file")
    amount = search.add_mutually_exclusive_group()
    amount.add_argument("--trials", type=at_least(1), help="trials to add (default: search.trials)")
    amount.add_argument(
        "--until",
        type=at_least(1),
        metavar="N",
        help="run until the study holds N completed trials, with every other worker on it "
        "(start one per host; a killed worker's trial is retried by the others)",
    )
    add_storage_argument(search)
    search.add_argument(
        "--workers", type=at_least(1), default=1, help="processes sharing the study"
    )
    search.add_argument("--sampler", choices=SAMPLERS, help="override")
    search.add_argument("--backend", choices=["optuna", "ray"], default="optuna")
    search.add_argument("--ray-address", help="Ray cluster address (default: start one here)")
    search.add_argument(
        "--device",
        metavar="NAME",
        help="a profiled device (exitnas profile): its expected latency is a third objective",
    )
    search.add_argument("--run", type=Path, help="run folder (default: runs/<study name>)")
    add_data_argument(search)
    add_threads_argument(search)
    add_quiet_argument(search)
    search.set_defaults(handler=_search)
    return search
