"""``exitnas train STUDY``: train a study's supernet once (resumed from its checkpoint).

The first Ctrl-C (or SIGTERM) stops after the current step and writes a checkpoint, exit code
130; ``--stop-at-step N`` stops the same way on purpose (exit code 0).

Example:
    exitnas train studies/quickstart.yaml
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from exitnas.cli.options import (
    add_data_argument,
    add_quiet_argument,
    add_threads_argument,
    at_least,
)

__all__ = ["add_train_parser"]


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
    study = study.with_data_path(args.data)
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


def add_train_parser(commands: Any) -> argparse.ArgumentParser:
    """Register ``exitnas train`` on the main parser's subcommands."""
    train = commands.add_parser(
        "train", help="train a study's supernet once (resumes from its checkpoint)"
    )
    train.add_argument("study", type=Path, help="study YAML file, e.g. studies/quickstart.yaml")
    add_data_argument(train)
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
    add_quiet_argument(train)
    train.set_defaults(handler=_train)
    return train
