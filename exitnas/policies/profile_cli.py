"""``exitnas profile``: per-stage latency profiles of a searched study, kept in its database.

By default the command times every stage of the study's Pareto-front configs (plus a few
configs sampled from the space, so a latency model has enough distinct stages to learn from)
on this machine and stores the :class:`~exitnas.policies.profile.DeviceProfile` under
``--device`` in the study's database. ``--export`` / ``--import`` move a stored profile to and
from a JSON file (for devices profiled elsewhere); ``--evaluate`` reports how well a
:class:`~exitnas.policies.latency.StageLatencyModel` predicts held-out stages of a profile.

Registered on the main parser by :func:`add_profile_parser`; the handler returns the exit code
and raises :class:`~exitnas.errors.ExitnasError` subclasses for anything the user can fix.

Example:
    exitnas profile --study runs/quickstart --device laptop-cpu --threads 2
    exitnas profile --study runs/quickstart --device laptop-cpu --evaluate
    exitnas profile --study runs/quickstart --device laptop-cpu --export laptop.json
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exitnas.argtypes import at_least
from exitnas.policies.options import ProfileError

if TYPE_CHECKING:
    from exitnas.policies.profile import DeviceProfile

__all__ = [
    "MIN_CONFIGS",
    "ProfileSettings",
    "add_profile_parser",
    "profile_run",
    "profiled_configs",
    "write_kit",
]

MIN_CONFIGS = 15  # configs profiled by default (front + sampled): enough for the latency model


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


@dataclass(frozen=True)
class ProfileSettings:
    """How ``exitnas profile`` measures (its command-line options)."""

    batch_sizes: tuple[int, ...] = (1, 32)
    repeats: int = 50
    passes: int = 10
    warmup: int = 3
    threads: int = 1
    configs: int | None = None  # sampled configs beside the front's; None: up to MIN_CONFIGS
    torch_device: str = "cpu"
    runtime: str = "torch"  # what runs the stages: torch (eager) or onnx (ONNX Runtime, CPU)


def profile_run(
    run: Path,
    study: Any,
    model: Any,
    url: str,
    device_name: str,
    settings: ProfileSettings = ProfileSettings(),
    *,
    replace: bool = False,
    progress: bool = True,
) -> tuple[DeviceProfile, int]:
    """Time the front's configs and sampled ones on this machine and store the profile.

    Returns:
        The stored profile and the number of configs timed.

    Raises:
        ProfileError: an unusable torch device.
        ProfileExistsError: ``device_name`` is profiled already and ``replace`` is False.
    """
    import torch
    from tqdm.auto import tqdm

    from exitnas.policies.overheads import measure_overheads
    from exitnas.policies.profile import DeviceProfile, measure_stage_latencies
    from exitnas.search.objective import file_sha256
    from exitnas.search.runner import load_searched
    from exitnas.search.storage import open_store
    from exitnas.search.store import ProfileExistsError, check_names
    from exitnas.supernet.batches import normalize
    from exitnas.supernet.train import WEIGHTS

    try:
        device = torch.device(settings.torch_device)
    except RuntimeError:
        raise ProfileError(
            f"--torch-device: unknown torch device {settings.torch_device!r}"
        ) from None
    try:
        torch.empty(0, device=device)  # the device exists here (cuda:7 on one GPU, mps, ...)
    except (RuntimeError, AssertionError) as err:
        raise ProfileError(
            f"--torch-device {settings.torch_device}: not usable here ({err})"
        ) from None
    check_names(study.name, device_name)
    splits, optuna_study = load_searched(study, run, url, progress=progress)
    store = open_store(url)  # after the study check: a wrong URL creates no database
    if device_name in store.list_devices(study.name) and not replace:
        raise ProfileExistsError(
            f"device {device_name!r} is already profiled for study {study.name!r} in {url}; "
            "pass --replace to measure it again"
        )
    configs = profiled_configs(study, optuna_study, settings.configs)
    passes = min(settings.passes, settings.repeats)
    if settings.runtime == "onnx":
        from exitnas.deploy import measure_onnx_stage_latencies

        timings, overheads, runtime = measure_onnx_stage_latencies(
            [model.extract(config) for config in configs],
            image_size=study.data.image_size,
            batch_sizes=settings.batch_sizes,
            warmup=settings.warmup,
            repeats=settings.repeats,
            passes=passes,
            threads=settings.threads,
        )
    else:
        batch = max(settings.batch_sizes)
        images = normalize(splits.val.images[:batch], splits.mean, splits.std)
        subnets = [model.extract(config).to(device) for config in configs]
        with tqdm(
            total=passes * len(subnets),
            desc=f"profile {device_name}",
            unit="config",
            disable=not progress,
        ) as bar:
            timings = measure_stage_latencies(
                subnets,
                images,
                batch_sizes=settings.batch_sizes,
                warmup=settings.warmup,
                repeats=settings.repeats,
                threads=settings.threads,
                passes=passes,
                progress=lambda: bar.update(1),
            )
        overheads = measure_overheads(
            subnets,
            splits.val.images[:batch],
            splits.mean,
            splits.std,
            timings,
            batch_sizes=settings.batch_sizes,
            threads=settings.threads,
        )
        runtime = "torch"
    profile = DeviceProfile.create(
        timings,
        device=device_name,
        study_key=study.key(),
        weights_hash=file_sha256(run / WEIGHTS),
        threads=settings.threads,
        overheads=overheads,
        runtime=runtime,
    )
    store.put_profile(study.name, profile, replace=replace)
    return profile, len(configs)


def profiled_configs(study: Any, optuna_study: Any, sampled: int | None = None) -> list[Any]:
    """The configs a profile times: the Pareto front's, and sampled ones beside them.

    Args:
        study: the study file.
        optuna_study: its searched study.
        sampled: configs sampled from the space beside the front's (seeded by the study);
            None: as many as bring the total to :data:`MIN_CONFIGS`.
    """
    import numpy as np
    import optuna

    from exitnas.search.export import pareto_points

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    configs = {p.config.key(): p.config for p in pareto_points(optuna_study, study.space)}
    extra = max(0, MIN_CONFIGS - len(configs)) if sampled is None else sampled
    rng = np.random.default_rng(study.seed)
    wanted = len(configs) + extra
    for _ in range(50 * extra):  # a tiny space may hold fewer distinct configs than asked
        if len(configs) >= wanted:
            break
        config = study.space.sample(rng)
        configs.setdefault(config.key(), config)
    return list(configs.values())


def write_kit(
    run: Path, study: Any, model: Any, url: str, out: Path, sampled: int | None = None
) -> tuple[Path, int]:
    """Write an on-device profiling kit of the study's profiled configs (``--kit``).

    Returns:
        The kit folder and the number of configs in it.
    """
    from exitnas.deploy import write_profile_kit
    from exitnas.search.export import check_out_dir
    from exitnas.search.objective import file_sha256
    from exitnas.search.runner import load_searched_study
    from exitnas.supernet.train import WEIGHTS

    check_out_dir(out)  # before any work
    optuna_study = load_searched_study(study, url)
    configs = profiled_configs(study, optuna_study, sampled)
    write_profile_kit(
        [model.extract(config) for config in configs],
        out,
        study_key=study.key(),
        image_size=study.data.image_size,
        weights_hash=file_sha256(run / WEIGHTS),
    )
    return out, len(configs)


def _measure(args: argparse.Namespace, run: Path, study: Any, model: Any, url: str) -> int:
    """Default mode: time the front's configs and sampled ones, store the profile."""
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
    profile, configs = profile_run(
        run, study, model, url, args.device, settings, replace=args.replace, progress=not args.quiet
    )
    sizes = ",".join(str(b) for b in args.batch_sizes)
    print(
        f"profiled device {args.device!r} for study {study.name!r}: {len(profile.timings)} "
        f"stages timed with {args.runtime} ({configs} configs, batch sizes {sizes}, "
        f"{args.threads} threads) in "
        f"{time.perf_counter() - started:.1f} s -> {url}"
    )
    return 0


def _import(args: argparse.Namespace, run: Path, study: Any, url: str) -> int:
    from exitnas.policies.profile import DeviceProfile
    from exitnas.search.objective import file_sha256
    from exitnas.search.runner import load_searched_study
    from exitnas.search.storage import open_store
    from exitnas.supernet.train import WEIGHTS

    path = Path(args.import_path)
    profile = DeviceProfile.load(path)
    weights_hash = file_sha256(run / WEIGHTS)
    differs = []
    if profile.study_key != study.key():
        differs.append(f"study key {profile.study_key}, this study's is {study.key()}")
    if profile.weights_hash != weights_hash:
        differs.append(
            f"supernet weights sha256 {profile.weights_hash[:12] or '(none)'}..., this run's "
            f"is {weights_hash[:12]}..."
        )
    if differs:
        raise ProfileError(
            f"{path} was profiled for another study or supernet than {run} "
            f"({'; '.join(differs)}); profile this run instead"
        )
    load_searched_study(study, url)  # the study must be in this database
    profile = replace(profile, device=args.device)
    open_store(url).put_profile(study.name, profile, replace=args.replace)
    print(
        f"imported {path} as device {args.device!r} of study {study.name!r}: "
        f"{len(profile.timings)} stages timed -> {url}"
    )
    return 0


def _stored(args: argparse.Namespace, study: Any, url: str) -> DeviceProfile:
    from exitnas.policies.costs import unknown_device
    from exitnas.search.runner import load_searched_study
    from exitnas.search.storage import open_store

    load_searched_study(study, url)  # a missing database or study: a clear error, no new file
    store = open_store(url)
    profile = store.get_profile(study.name, args.device)
    if profile is None:
        raise unknown_device(store, study.name, args.device, url)
    return profile


def _export(args: argparse.Namespace, study: Any, url: str) -> int:
    profile = _stored(args, study, url)
    profile.save(args.export)
    print(
        f"exported profile of device {args.device!r} ({len(profile.timings)} stages) -> "
        f"{args.export}"
    )
    return 0


def _evaluate(args: argparse.Namespace, study: Any, url: str) -> int:
    from exitnas.policies.latency import StageLatencyModel

    profile = _stored(args, study, url)
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


def _profile(args: argparse.Namespace) -> int:
    from exitnas.search.runner import open_run

    if not args.device.strip():
        raise ProfileError("--device: give the profiled device a name, e.g. laptop-cpu")
    run = Path(args.study)
    model, study, url = open_run(run, args.storage, args.data)
    if args.export is not None:
        return _export(args, study, url)
    if args.import_path is not None:
        return _import(args, run, study, url)
    if args.evaluate:
        return _evaluate(args, study, url)
    if args.kit is not None:
        kit, configs = write_kit(run, study, model, url, args.kit, args.configs)
        print(
            f"profiling kit of study {study.name!r}: {configs} configs -> {kit}; on the "
            f"device (Python, NumPy, ONNX Runtime): python {kit}/exitnas_runtime.py profile "
            f"{kit} --out PROFILE.json, then here: exitnas profile --study {run} --device "
            f"{args.device} --import PROFILE.json"
        )
        return 0
    return _measure(args, run, study, model, url)


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
    profile.add_argument(
        "--study",
        type=Path,
        required=True,
        metavar="RUN_DIR",
        help="run folder, e.g. runs/quickstart",
    )
    profile.add_argument(
        "--device",
        required=True,
        metavar="NAME",
        help="name the profile is stored under, e.g. laptop-cpu",
    )
    profile.add_argument(
        "--storage",
        metavar="URL",
        help="SQLAlchemy URL (default: the search's, sqlite:///RUN_DIR/study.db)",
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
    profile.add_argument(
        "--data", type=Path, metavar="PATH", help="image folder or tar tree; overrides data.path"
    )
    profile.add_argument("--quiet", action="store_true", help="no progress bars")
    profile.set_defaults(handler=_profile)
    return profile
