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
from dataclasses import replace
from pathlib import Path
from typing import NoReturn

from exitnas.argtypes import add_threads_argument, at_least
from exitnas.errors import ExitnasError
from exitnas.spaces.study import SAMPLERS
from exitnas.threads import register

__all__ = ["main"]


def _train(args: argparse.Namespace) -> int:
    from exitnas.spaces import load_study

    study = load_study(args.study).with_overrides(
        epochs=args.epochs, device=args.device, num_threads=args.threads
    )  # before the heavy imports: a study file's mistake is reported at once

    from exitnas.data import load_splits
    from exitnas.supernet import TrainingInterrupted, train_supernet
    from exitnas.supernet.distributed import init_distributed
    from exitnas.supernet.train import check_target

    ranks, device = init_distributed(study.training.device)  # several under torchrun
    study = study.with_overrides(device=device)
    if args.data is not None:
        study = replace(study, data=replace(study.data, path=str(args.data)))
    out = Path(args.out) if args.out else Path("runs") / study.name
    check_target(study, out)
    data_cfg = study.data
    splits = load_splits(
        data_cfg.dataset,
        data_cfg.path,
        data_cfg.image_size,
        data_cfg.val_fraction,
        study.seed,
        cache_dir=args.cache_dir,
        download=data_cfg.download,
        in_chans=study.space.in_chans,
        num_classes=study.space.num_classes,
        progress=not args.quiet,
    )
    try:
        summary = train_supernet(
            study,
            splits,
            out,
            progress=not args.quiet,
            stop_at_step=args.stop_at_step,
            ranks=ranks,
            init=args.init,
        )
    except TrainingInterrupted as stop:
        asked = args.stop_at_step is not None and stop.step >= args.stop_at_step
        if ranks.main:
            hint = "without --stop-at-step" if asked else "again"
            print(f"exitnas: {stop}; run the same command {hint} to resume", file=sys.stderr)
        return 0 if asked else 130
    if not ranks.main:
        return 0
    print(
        f"supernet trained: {out}/supernet.safetensors  "
        f"({summary.steps} steps, {summary.seconds:.1f} s, {summary.images_per_second:.0f} img/s)\n"
        f"validation accuracy: standalone {summary.val_accuracy_standalone:.4f}, "
        f"largest {summary.val_accuracy_largest:.4f}, smallest {summary.val_accuracy_smallest:.4f}"
    )
    return 0


def _study_with_data(args: argparse.Namespace):
    from exitnas.spaces import load_study

    study = load_study(args.study)
    if getattr(args, "data", None) is not None:
        study = replace(study, data=replace(study.data, path=str(args.data)))
    return study


def _search(args: argparse.Namespace) -> int:
    study = _study_with_data(args).with_overrides(num_threads=args.threads)  # fast: no torch

    import optuna

    from exitnas.search import SearchInterrupted, run_search

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the progress bar reports trials
    if args.sampler:
        study = replace(study, search=replace(study.search, sampler=args.sampler))
    run = Path(args.run) if args.run else Path("runs") / study.name
    if args.backend == "ray":
        from exitnas.search.ray_backend import run_ray_search

        if args.until is not None:
            raise ExitnasError("--until works with --backend optuna; use --trials with ray")
        summary = run_ray_search(
            study,
            run,
            trials=args.trials,
            storage=args.storage,
            workers=args.workers,
            address=args.ray_address,
            device=args.device,
            progress=not args.quiet,
        )
    else:
        try:
            summary = run_search(
                study,
                run,
                trials=args.trials,
                until=args.until,
                storage=args.storage,
                workers=args.workers,
                device=args.device,
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


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (``exitnas train: error: ...``), exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="exitnas",
        description="Search vision-transformer architectures and their early-exit policies.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train = commands.add_parser(
        "train", help="train a study's supernet once (resumes from its checkpoint)"
    )
    train.add_argument("study", type=Path, help="study YAML file, e.g. studies/quickstart.yaml")
    train.add_argument(
        "--data", type=Path, help="image folder or tar tree (class-per-folder); overrides data.path"
    )
    train.add_argument("--out", type=Path, help="run folder (default: runs/<study name>)")
    train.add_argument("--epochs", type=int, help="override training.epochs")
    train.add_argument("--device", help="override training.device (cpu, cuda, ...)")
    train.add_argument(
        "--stop-at-step",
        type=at_least(1),
        metavar="N",
        help="stop with a checkpoint once N steps are done (a time-limited job slot); "
        "the same command without it resumes",
    )
    train.add_argument(
        "--init",
        type=Path,
        metavar="CHECKPOINT",
        help="start from a pretrained timm ViT (safetensors or torch state dict) with the "
        "backbone's width, depth and heads (any patch and image size); exit heads other than "
        "the final linear ones and the reuse modules start fresh; ignored when resuming",
    )
    train.add_argument("--cache-dir", type=Path, help="decoded-image cache (~/.cache/exitnas)")
    add_threads_argument(train)
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    train.set_defaults(handler=_train)

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
    search.add_argument(
        "--storage", help="SQLAlchemy URL (default: sqlite:///runs/<study>/study.db)"
    )
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
    search.add_argument("--data", type=Path, help="image folder or tar tree; overrides data.path")
    add_threads_argument(search)
    search.add_argument("--quiet", action="store_true", help="no progress bars")
    search.set_defaults(handler=_search)

    from exitnas.pipeline import add_run_parser
    from exitnas.policies.policy_cli import add_policy_parser
    from exitnas.policies.profile_cli import add_profile_parser
    from exitnas.reports.cli import add_report_parser
    from exitnas.search.export_cli import add_export_parser

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


if __name__ == "__main__":
    sys.exit(main())
