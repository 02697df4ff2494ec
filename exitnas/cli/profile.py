"""``exitnas profile``: measure, import, export or evaluate a run's device profiles.

By default the command times every stage of the study's Pareto-front configs (and sampled
ones) on this machine and stores the profile under ``--device``
(:func:`~exitnas.jobs.profile.profile_device`). ``--export`` / ``--import`` move a stored
profile to and from a JSON file, ``--kit`` writes an on-device profiling kit, ``--evaluate``
reports how well the latency model predicts held-out stages.

Example:
    exitnas profile --study runs/quickstart --device laptop-cpu --threads 2
    exitnas profile --study runs/quickstart --device laptop-cpu --evaluate
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exitnas.cli.options import add_run_arguments, at_least, open_run
from exitnas.devices.errors import ProfileError
from exitnas.jobs.profile import MIN_CONFIGS

if TYPE_CHECKING:
    from exitnas.runs import Run

__all__ = ["add_profile_parser"]


def _batch_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"batch sizes must be at least 1, got {text!r}")
    return tuple(dict.fromkeys(sizes))


def _measure(args: argparse.Namespace, run: Run) -> int:
    """Default mode: time the front's configs and sampled ones, store the profile."""
    from exitnas.jobs.profile import ProfileSettings, profile_device

    settings = ProfileSettings(
        batch_sizes=args.batch_sizes,
        repeats=args.repeats,
        passes=args.passes,
        warmup=args.warmup,
        threads=args.threads,
        configs=args.configs,
        torch_device=args.torch_device,
        runtime=args.runtime,
    )
    if args.runtime == "onnx" and args.torch_device != "cpu":
        raise ProfileError(
            "--runtime onnx times on ONNX Runtime's CPU provider; drop --torch-device"
        )
    started = time.perf_counter()
    profile, configs = profile_device(
        run, args.device, settings, replace=args.replace, progress=not args.quiet
    )
    sizes = ",".join(str(b) for b in args.batch_sizes)
    print(
        f"profiled device {args.device!r} for study {run.study.name!r}: {len(profile.timings)} "
        f"stages timed with {args.runtime} ({configs} configs, batch sizes {sizes}, "
        f"{args.threads} threads) in "
        f"{time.perf_counter() - started:.1f} s -> {run.url}"
    )
    return 0


def _import(args: argparse.Namespace, run: Run) -> int:
    from exitnas.jobs.profile import import_profile

    profile = import_profile(run, Path(args.import_path), args.device, replace=args.replace)
    print(
        f"imported {args.import_path} as device {args.device!r} of study {run.study.name!r}: "
        f"{len(profile.timings)} stages timed -> {run.url}"
    )
    return 0


def _export(args: argparse.Namespace, run: Run) -> int:
    from exitnas.jobs.profile import stored_profile

    profile = stored_profile(run, args.device)
    profile.save(args.export)
    print(
        f"exported profile of device {args.device!r} ({len(profile.timings)} stages) -> "
        f"{args.export}"
    )
    return 0


def _evaluate(args: argparse.Namespace, run: Run) -> int:
    from exitnas.devices.latency import StageLatencyModel
    from exitnas.jobs.profile import stored_profile

    profile = stored_profile(run, args.device)
    try:
        scores = StageLatencyModel().evaluate(profile.timings, n_splits=args.splits)
    except ValueError as err:
        raise ProfileError(f"profile of device {args.device!r}: {err}") from None
    splits = scores["mdape_splits"]
    print(
        f"latency model on device {args.device!r}: held-out MdAPE {scores['mdape']:.1%} "
        f"(median of {len(splits)} splits, range {min(splits):.1%}-{max(splits):.1%}; "
        f"{scores['n_train']} train / {scores['n_test']} test stage timings)"
    )
    return 0


def _kit(args: argparse.Namespace, run: Run) -> int:
    from exitnas.jobs.profile import write_kit

    kit, configs = write_kit(run, args.kit, args.configs)
    print(
        f"profiling kit of study {run.study.name!r}: {configs} configs -> {kit}; on the "
        f"device (Python, NumPy, ONNX Runtime): python {kit}/exitnas_runtime.py profile "
        f"{kit} --out PROFILE.json, then here: exitnas profile --study {run.path} --device "
        f"{args.device} --import PROFILE.json"
    )
    return 0


def _profile(args: argparse.Namespace) -> int:
    if not args.device.strip():
        raise ProfileError("--device: give the profiled device a name, e.g. laptop-cpu")
    run = open_run(args)
    if args.export is not None:
        return _export(args, run)
    if args.import_path is not None:
        return _import(args, run)
    if args.evaluate:
        return _evaluate(args, run)
    if args.kit is not None:
        return _kit(args, run)
    return _measure(args, run)


def add_profile_parser(commands: Any) -> argparse.ArgumentParser:
    """Register ``exitnas profile`` on the main parser's subcommands.

    Args:
        commands: what ``ArgumentParser.add_subparsers`` returned.

    Returns:
        The ``profile`` parser (its handler is set as ``handler``).
    """
    profile = commands.add_parser(
        "profile",
        help="time every stage of a study's sub-networks on this device (or move/evaluate a "
        "stored device profile)",
    )
    add_run_arguments(profile)
    profile.add_argument(
        "--device",
        required=True,
        metavar="NAME",
        help="name the profile is stored under, e.g. laptop-cpu",
    )
    mode = profile.add_mutually_exclusive_group()
    mode.add_argument(
        "--export", type=Path, metavar="PATH", help="write the stored profile to this JSON file"
    )
    mode.add_argument(
        "--import",
        dest="import_path",
        metavar="PATH",
        type=Path,
        help="store a profile file (of this study and supernet) under --device",
    )
    mode.add_argument(
        "--evaluate",
        action="store_true",
        help="held-out error (MdAPE) of a latency model fitted on the stored profile",
    )
    mode.add_argument(
        "--kit",
        type=Path,
        metavar="DIR",
        help="write an on-device profiling kit (ONNX stage graphs of the configs it would "
        "time, and a script needing only Python, NumPy and ONNX Runtime); its profile comes "
        "back with --import",
    )
    _add_timing_arguments(profile)
    profile.set_defaults(handler=_profile)
    return profile


def _add_timing_arguments(profile: argparse.ArgumentParser) -> None:
    """How ``exitnas profile`` times the stages here (and ``--evaluate``'s splits)."""
    profile.add_argument(
        "--runtime",
        choices=("torch", "onnx"),
        default="torch",
        help="what runs the stages when timing here: torch (eager, default) or onnx (ONNX "
        "Runtime on the CPU, as a kit and an ONNX bundle run)",
    )
    profile.add_argument(
        "--batch-sizes",
        type=_batch_sizes,
        default=(1, 32),
        metavar="B1,B2",
        help="comma-separated (default 1,32)",
    )
    profile.add_argument(
        "--repeats",
        type=at_least(1),
        default=50,
        metavar="N",
        help="timed runs per stage (default 50)",
    )
    profile.add_argument(
        "--passes",
        type=at_least(1),
        default=10,
        metavar="N",
        help="interleaved passes over all configs the repeats are split into (default 10)",
    )
    profile.add_argument(
        "--splits",
        type=at_least(1),
        default=10,
        metavar="N",
        help="--evaluate: random held-out splits (default 10)",
    )
    profile.add_argument(
        "--warmup",
        type=at_least(0),
        default=3,
        metavar="N",
        help="untimed runs per stage first (default 3)",
    )
    profile.add_argument(
        "--threads",
        type=at_least(1),
        default=1,
        metavar="N",
        help="torch threads while timing (default 1)",
    )
    profile.add_argument(
        "--configs",
        type=at_least(0),
        metavar="N",
        help=f"configs sampled beside the Pareto front's (default: up to {MIN_CONFIGS} in all)",
    )
    profile.add_argument(
        "--torch-device",
        default="cpu",
        metavar="DEVICE",
        help="torch device the stages run on (default cpu)",
    )
    profile.add_argument(
        "--replace", action="store_true", help="replace a stored profile of --device"
    )
