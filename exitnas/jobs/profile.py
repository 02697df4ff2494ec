"""Per-stage latency profiles of a searched run, kept in its database (``exitnas profile``).

:func:`profile_device` times every stage of the study's Pareto-front configs (plus a few
configs sampled from the space, so a latency model has enough distinct stages to learn from)
on this machine and stores the :class:`~exitnas.devices.profile.DeviceProfile` under
``--device`` in the study's database. ``--export`` / ``--import`` move a stored profile to and
from a JSON file (for devices profiled elsewhere); ``--evaluate`` reports how well a
:class:`~exitnas.devices.latency.StageLatencyModel` predicts held-out stages of a profile.

Example:
    exitnas profile --study runs/quickstart --device laptop-cpu --threads 2
    exitnas profile --study runs/quickstart --device laptop-cpu --evaluate
    exitnas profile --study runs/quickstart --device laptop-cpu --export laptop.json
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from exitnas.devices.errors import ProfileError

if TYPE_CHECKING:
    import optuna
    import torch

    from exitnas.devices.profile import DeviceProfile, RuntimeOverhead, StageTiming
    from exitnas.runs import Run
    from exitnas.spaces import StudyConfig, SubnetConfig

__all__ = [
    "MIN_CONFIGS",
    "ProfileSettings",
    "profile_device",
    "import_profile",
    "profiled_configs",
    "stored_profile",
    "write_kit",
]

MIN_CONFIGS = 15  # configs profiled by default (front + sampled): enough for the latency model


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


def _torch_device(name: str) -> torch.device:
    """The torch device ``--torch-device`` names, checked to exist here."""
    import torch

    try:
        device = torch.device(name)
    except RuntimeError:
        raise ProfileError(f"--torch-device: unknown torch device {name!r}") from None
    try:
        torch.empty(0, device=device)  # the device exists here (cuda:7 on one GPU, mps, ...)
    except (RuntimeError, AssertionError) as err:
        raise ProfileError(f"--torch-device {name}: not usable here ({err})") from None
    return device


def _measure_torch(
    run: Run,
    configs: list[SubnetConfig],
    settings: ProfileSettings,
    device: torch.device,
    label: str,
    progress: bool,
) -> tuple[list[StageTiming], tuple[RuntimeOverhead, ...], str]:
    """Stage timings and ``predict``'s overheads of ``configs`` run by torch (eager)."""
    from tqdm.auto import tqdm

    from exitnas.deploy.overheads import measure_overheads
    from exitnas.devices.profile import measure_stage_latencies
    from exitnas.supernet.batches import normalize

    splits, batch = run.splits, max(settings.batch_sizes)
    passes = min(settings.passes, settings.repeats)
    images = normalize(splits.val.images[:batch], splits.mean, splits.std)
    subnets = [run.supernet.extract(config).to(device) for config in configs]
    with tqdm(total=passes * len(subnets), desc=label, unit="config", disable=not progress) as bar:
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
    return timings, overheads, "torch"


def _measure_onnx(
    run: Run, configs: list[SubnetConfig], settings: ProfileSettings
) -> tuple[list[StageTiming], tuple[RuntimeOverhead, ...], str]:
    """Stage timings and the runtime's overheads of ``configs`` run by ONNX Runtime."""
    from exitnas.deploy import measure_onnx_stage_latencies

    return measure_onnx_stage_latencies(
        [run.supernet.extract(config) for config in configs],
        image_size=run.study.data.image_size,
        batch_sizes=settings.batch_sizes,
        warmup=settings.warmup,
        repeats=settings.repeats,
        passes=min(settings.passes, settings.repeats),
        threads=settings.threads,
    )


def profile_device(
    run: Run,
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
    from exitnas.devices.profile import DeviceProfile
    from exitnas.storage.store import ProfileExistsError, check_names

    study = run.study
    device = _torch_device(settings.torch_device)  # before any work
    check_names(study.name, device_name)
    optuna_study = run.searched()
    store = run.store  # after the study check: a wrong URL creates no database
    if device_name in store.list_devices(study.name) and not replace:
        raise ProfileExistsError(
            f"device {device_name!r} is already profiled for study {study.name!r} in {run.url}; "
            "pass --replace to measure it again"
        )
    configs = profiled_configs(study, optuna_study, settings.configs)
    if settings.runtime == "onnx":
        timings, overheads, runtime = _measure_onnx(run, configs, settings)
    else:
        measured = _measure_torch(
            run, configs, settings, device, f"profile {device_name}", progress
        )
        timings, overheads, runtime = measured
    profile = DeviceProfile.create(
        timings,
        device=device_name,
        study_key=study.key(),
        weights_hash=run.weights_sha256,
        threads=settings.threads,
        overheads=overheads,
        runtime=runtime,
    )
    store.put_profile(study.name, profile, replace=replace)
    run.forget_costs(device_name)
    return profile, len(configs)


def profiled_configs(
    study: StudyConfig, optuna_study: optuna.Study, sampled: int | None = None
) -> list[SubnetConfig]:
    """The configs a profile times: the Pareto front's, and sampled ones beside them.

    Args:
        study: the study file.
        optuna_study: its searched study.
        sampled: configs sampled from the space beside the front's (seeded by the study);
            None: as many as bring the total to :data:`MIN_CONFIGS`.
    """
    import numpy as np
    import optuna

    from exitnas.search.front import pareto_points

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


def write_kit(run: Run, out: Path, sampled: int | None = None) -> tuple[Path, int]:
    """Write an on-device profiling kit of the study's profiled configs (``--kit``).

    Returns:
        The kit folder and the number of configs in it.
    """
    from exitnas.deploy import write_profile_kit
    from exitnas.deploy.write import check_out_dir
    from exitnas.search.studies import load_searched_study

    check_out_dir(out)  # before any work
    study = run.study
    optuna_study = load_searched_study(study, run.url)  # no validation split needed
    configs = profiled_configs(study, optuna_study, sampled)
    write_profile_kit(
        [run.supernet.extract(config) for config in configs],
        out,
        study_key=study.key(),
        image_size=study.data.image_size,
        weights_hash=run.weights_sha256,
    )
    return out, len(configs)


def import_profile(run: Run, path: Path, device: str, *, replace: bool = False) -> DeviceProfile:
    """Store the profile file ``path`` (measured elsewhere, e.g. by a kit) under ``device``.

    Raises:
        ProfileError: the file is unreadable, or was measured for another study or supernet.
        ProfileExistsError: ``device`` is profiled already and ``replace`` is False.
    """
    from dataclasses import replace as with_fields

    from exitnas.devices.profile import DeviceProfile
    from exitnas.search.studies import load_searched_study

    profile = DeviceProfile.load(path)
    study, weights_hash = run.study, run.weights_sha256
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
            f"{path} was profiled for another study or supernet than {run.path} "
            f"({'; '.join(differs)}); profile this run instead"
        )
    load_searched_study(study, run.url)  # the study must be in this database
    profile = with_fields(profile, device=device)
    run.store.put_profile(study.name, profile, replace=replace)
    run.forget_costs(device)
    return profile


def stored_profile(run: Run, device: str) -> DeviceProfile:
    """The profile stored for ``device``.

    Raises:
        ProfileError: no such device (the message lists the profiled ones).
    """
    from exitnas.devices.costs import unknown_device
    from exitnas.search.studies import load_searched_study

    study = run.study
    load_searched_study(study, run.url)  # a missing database or study: a clear error, no file
    profile = run.store.get_profile(study.name, device)
    if profile is None:
        raise unknown_device(run.store, study.name, device, run.url)
    return profile
