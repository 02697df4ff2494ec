"""The ``exitnas`` command line.

Every error a user can cause prints one line (``exitnas: error: ...``) and exits with code 2,
without a traceback. The first Ctrl-C (or SIGTERM) stops training after the current step and
writes a checkpoint, exit code 130; a second Ctrl-C stops at once (the last checkpoint stays).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from exitnas.errors import ExitnasError

__all__ = ["main"]


def _train(args: argparse.Namespace) -> int:
    from exitnas.data import load_splits
    from exitnas.spaces import load_study
    from exitnas.supernet import TrainingInterrupted, train_supernet
    from exitnas.supernet.train import check_target

    study = load_study(args.study).with_overrides(epochs=args.epochs, device=args.device)
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
    )
    try:
        summary = train_supernet(study, splits, out, progress=not args.quiet)
    except TrainingInterrupted as stop:
        print(f"exitnas: {stop}; run the same command again to resume", file=sys.stderr)
        return 130
    print(
        f"supernet trained: {out}/supernet.safetensors  "
        f"({summary.steps} steps, {summary.seconds:.1f} s, {summary.images_per_second:.0f} img/s)\n"
        f"validation accuracy: largest {summary.val_accuracy_largest:.4f}, "
        f"smallest {summary.val_accuracy_smallest:.4f}"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
    train.add_argument("--cache-dir", type=Path, help="decoded-image cache (~/.cache/exitnas)")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(handler=_train)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``exitnas`` console script."""
    args = build_parser().parse_args(argv)
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
