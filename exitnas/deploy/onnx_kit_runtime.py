"""exitnas ONNX profiler: every stage of a profiling kit timed on the device, with ONNX Runtime.

Like the runtime it sits beside, this file needs only Python 3.10+, NumPy and ONNX Runtime. It
sits in the exitnas package as ``exitnas/deploy/onnx_kit_runtime.py`` and is copied unchanged
into every profiling kit as ``exitnas_profiler.py``, next to ``exitnas_runtime.py``
(:mod:`exitnas.deploy.onnx_runtime`), which loads the kit's configurations; bundles do not carry
it.

A kit holds ``kit.json`` (the study's key, image size and, per configuration, its folder and its
stages' features), one bundle-like folder per configuration, the stand-in learned policy's
``policy.onnx`` and ``manifest.json``. :func:`profile_kit` times every stage of every
configuration (warm-up, interleaved passes, fixed threads), then what ``predict`` costs beyond
its stages, and returns a device profile that ``exitnas profile --import`` reads.

Usage (the runtime's ``profile`` command runs :func:`profile_main`):
    python exitnas_runtime.py profile KIT --out PROFILE.json [--batch-sizes 1 32] [--threads N]

Example:
    >>> import exitnas_profiler
    >>> profile = exitnas_profiler.profile_kit("kit", batch_sizes=(1, 32), threads=1)
    >>> profile["timings"][0]["median_ms"]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

try:  # in exitnas, beside exitnas/deploy/onnx_runtime.py
    from . import onnx_runtime as runtime
except ImportError:  # in a kit, beside exitnas_runtime.py (no parent package)
    import exitnas_runtime as runtime  # type: ignore[no-redef]

__all__ = [
    "fit_overhead",
    "host_info",
    "measure_overheads",
    "profile_kit",
    "profile_main",
    "time_stages",
]

KIT = "kit.json"
KIT_FORMAT = "exitnas.profile_kit"
PROFILE_FORMAT = "exitnas.device_profile"  # what ``exitnas profile --import`` reads
PROFILE_VERSION = 2


# -- timing ---------------------------------------------------------------------------------


def time_stages(
    model: runtime.OnnxExitModel,
    images: np.ndarray,
    batch_size: int,
    *,
    warmup: int = 3,
    repeats: int = 10,
) -> np.ndarray:
    """``(repeats, stages)`` milliseconds of every stage of ``model`` at ``batch_size``.

    The state entering each stage is prepared untimed (every stage run on ``images``, repeated
    or cut to ``batch_size``); then every stage runs ``warmup`` times untimed and ``repeats``
    times timed, round-robin over the stages, as ``exitnas profile`` times torch stages.

    Args:
        model: a loaded bundle (its sessions' thread count is what gets measured).
        images: uint8 ``(n, C, H, W)`` images.
        batch_size: samples per run.
        warmup: untimed runs of every stage first.
        repeats: timed runs of every stage.
    """
    reps = -(-batch_size // len(images))
    batch = np.concatenate([images] * reps)[:batch_size]
    states = model.stage_states(batch)
    for _ in range(warmup):
        for k, state in enumerate(states):
            model.run_stage(k, state)
    samples = np.zeros((repeats, len(states)))
    for r in range(repeats):
        for k, state in enumerate(states):
            start = time.perf_counter()
            model.run_stage(k, state)
            samples[r, k] = (time.perf_counter() - start) * 1e3
    return samples


def fit_overhead(
    batch_size: int, residuals: list[tuple[int, float]], policy_ms: float = 0.0
) -> dict[str, Any]:
    """``fixed + stages x per stage`` fitted to ``(stages, ms per image)`` residuals (``predict``
    minus its stages), both non-negative, as exitnas's ``fit_overhead``."""
    stages = np.array([n for n, _ in residuals], dtype=float)
    ms = np.array([r for _, r in residuals], dtype=float)
    fixed, per_stage = 0.0, max(0.0, float(np.median(ms / stages)))
    if np.unique(stages).size > 1:
        design = np.stack([np.ones_like(stages), stages], 1)
        (fixed, per_stage), *_ = np.linalg.lstsq(design, ms, rcond=None)
        if per_stage < 0:  # the non-negative least squares: one of the two is zero
            fixed, per_stage = max(0.0, float(ms.mean())), 0.0
        elif fixed < 0:
            fixed, per_stage = 0.0, max(0.0, float(stages @ ms / (stages @ stages)))
    return {
        "batch_size": batch_size,
        "fixed_ms": float(fixed),
        "stage_ms": float(per_stage),
        "policy_ms": max(0.0, float(policy_ms)),
    }


def _ms_per_image(run: Any, images: int, repeats: int) -> float:
    """Median over ``repeats`` of ``run()``'s milliseconds per image (one untimed run first)."""
    run()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        samples.append((time.perf_counter() - start) * 1e3 / images)
    return float(np.median(samples))


def measure_overheads(
    models: list[runtime.OnnxExitModel],
    stage_ms: dict[tuple[int, int], float],
    batch_sizes: tuple[int, ...],
    *,
    policy: tuple[ort.InferenceSession | None, dict[str, Any]] | None = None,
    num_classes: int = 10,
    repeats: int = 5,
) -> list[dict[str, Any]]:
    """What ``predict`` costs beyond its stages, per batch size.

    Each model runs ``predict`` with every sample sent to its last exit (a kit's rule); its
    stages' median ms per image (``stage_ms[model index, batch size]``) are subtracted, and
    :func:`fit_overhead` fits the rest. ``policy`` (a stand-in policy graph and its entry)
    is timed per exit decision.
    """
    overheads = []
    rng = np.random.default_rng(0)
    for bs in batch_sizes:
        n = bs * max(1, 32 // bs)
        residuals = []
        for i, model in enumerate(models):
            shape = (n, model.in_chans, model.image_size, model.image_size)
            images = rng.integers(0, 256, size=shape, dtype=np.uint8)
            ms = _ms_per_image(partial(model.predict, images, batch_size=bs), n, repeats)
            residuals.append((model.num_exits, ms - stage_ms[i, bs]))
        policy_ms = 0.0
        if policy is not None:
            history = rng.normal(size=(2, bs, num_classes)).astype(np.float32)
            score = partial(runtime.policy_scores, *policy, history, 3)
            policy_ms = _ms_per_image(score, bs, 5 * repeats)
        overheads.append(fit_overhead(bs, residuals, policy_ms))
    return overheads


def host_info(threads: int) -> dict[str, Any]:
    """The machine, in the fields of exitnas's ``HostInfo`` (no torch here: its version is "")."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count() or 0,
        "torch_version": "",
        "threads": threads,
    }


def profile_kit(
    kit_dir: str | os.PathLike[str],
    *,
    batch_sizes: tuple[int, ...] = (1, 32),
    warmup: int = 3,
    repeats: int = 10,
    passes: int = 2,
    threads: int = 1,
    providers: list[str] | None = None,
    progress: bool = False,
    error: type[Exception] = runtime.BundleError,
) -> dict[str, Any]:
    """Time every stage of every configuration of a profiling kit; returns a device profile.

    The repeats are split into ``passes`` interleaved passes over all configurations (a slow
    drift of the machine's speed lands on every configuration alike), as ``exitnas profile``.

    Args:
        kit_dir: the kit folder (``exitnas profile --kit``): ``kit.json``, one bundle-like
            folder per configuration, ``manifest.json``.
        batch_sizes: batch sizes to time.
        warmup: untimed runs of every stage before timing, per batch size and pass.
        repeats: timed runs of every (stage, batch size); at least ``passes``.
        passes: interleaved passes over the configurations.
        threads: ONNX Runtime intra-op threads.
        providers: execution providers, ``["CPUExecutionProvider"]`` by default.
        progress: print one line per configuration and pass to stderr.
        error: exception class raised.

    Returns:
        A JSON-ready device profile that ``exitnas profile --import`` reads.
    """
    if repeats < 1 or warmup < 0 or not 1 <= passes <= repeats:
        raise ValueError(f"need repeats >= 1, warmup >= 0, 1 <= passes <= repeats; got {repeats}")
    if not batch_sizes or min(batch_sizes) < 1:
        raise ValueError(f"batch_sizes must be positive, got {tuple(batch_sizes)}")
    folder = Path(kit_dir)
    kit, configs, folders, shape = _read_kit(folder, error)
    providers = list(providers or ["CPUExecutionProvider"])
    models = [runtime.load(f, threads=threads, providers=providers, error=error) for f in folders]
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=shape, dtype=np.uint8)
    shares = [repeats // passes + (p < repeats % passes) for p in range(passes)]
    samples: dict[tuple[int, int], list[np.ndarray]] = {
        (i, bs): [] for i in range(len(models)) for bs in batch_sizes
    }
    for p, share in enumerate(shares):
        for i, model in enumerate(models):
            for bs in batch_sizes:
                samples[i, bs].append(time_stages(model, images, bs, warmup=warmup, repeats=share))
            if progress:
                print(f"pass {p + 1}/{passes}: {configs[i]['key']} timed", file=sys.stderr)
    timings, stage_ms = _stage_timings(configs, samples, batch_sizes)
    policy = _kit_policy(folder, kit, threads, providers)
    num_classes = int(kit.get("num_classes", 10))
    overheads = measure_overheads(
        models, stage_ms, batch_sizes, policy=policy, num_classes=num_classes
    )
    return {
        "format": PROFILE_FORMAT,
        "version": PROFILE_VERSION,
        "device": f"onnxruntime {ort.__version__} {providers[0]}",
        "host": host_info(threads),
        "study_key": kit["study_key"],
        "weights_hash": kit.get("weights_hash", ""),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "timings": timings,
        "overheads": overheads,
        "runtime": f"onnxruntime {ort.__version__} {providers[0]}",
        "runtime_detail": {
            "name": "onnxruntime",
            "version": ort.__version__,
            "providers": providers,
            "threads": threads,
            "kit_sha256": runtime.file_sha256(folder / KIT),
        },
    }


def _read_kit(
    folder: Path, error: type[Exception]
) -> tuple[dict[str, Any], list[dict[str, Any]], list[Path], tuple[int, int, int, int]]:
    """``kit.json`` checked (every kit file against the manifest first), its configurations,
    their folders and the shape of the 8 random images every stage is timed on."""
    runtime.verify_files(folder, (KIT,), error)
    kit = runtime.read_json(folder / KIT, error)
    if kit.get("format") != KIT_FORMAT or kit.get("version") != runtime.RUNTIME_FORMAT:
        raise error(
            f"{folder / KIT} is not an exitnas profiling kit of version {runtime.RUNTIME_FORMAT}"
        )
    try:
        configs = list(kit["configs"])
        folders = [folder / str(c["folder"]) for c in configs]
        shape = (8, int(kit["in_chans"]), int(kit["image_size"]), int(kit["image_size"]))
    except (KeyError, TypeError, ValueError) as err:
        raise error(f"{folder / KIT} is incomplete ({err!r})") from None
    return kit, configs, folders, shape


def _stage_timings(
    configs: list[dict[str, Any]],
    samples: dict[tuple[int, int], list[np.ndarray]],
    batch_sizes: tuple[int, ...],
) -> tuple[list[dict[str, Any]], dict[tuple[int, int], float]]:
    """One timing row per (configuration, batch size, stage): its features and the 10th, 50th
    and 90th percentile of its milliseconds; and every (configuration, batch size)'s median
    milliseconds per image over its stages."""
    timings = []
    stage_ms: dict[tuple[int, int], float] = {}  # (config, batch size) -> ms per image
    for i, config in enumerate(configs):
        for bs in batch_sizes:
            times = np.concatenate(samples[i, bs])
            p10, median, p90 = np.percentile(times, [10, 50, 90], axis=0)
            stage_ms[i, bs] = float(median.sum()) / bs
            for k, features in enumerate(config["stages"]):
                timing = dict(features, batch_size=bs)
                timing.update(
                    median_ms=float(median[k]), p10_ms=float(p10[k]), p90_ms=float(p90[k])
                )
                timings.append(timing)
    return timings, stage_ms


def _kit_policy(
    folder: Path, kit: dict[str, Any], threads: int, providers: list[str]
) -> tuple[ort.InferenceSession | None, dict[str, Any]] | None:
    """The kit's stand-in learned policy (its session, None when constant, and its entry), or
    None when the kit has none."""
    info = kit.get("policy")
    if not info:
        return None
    session = None
    if "file" in info:
        path = str(folder / str(info["file"]))
        options = runtime.session_options(threads)
        session = ort.InferenceSession(path, options, providers=providers)
    return session, info


# -- command line ---------------------------------------------------------------------------


def profile_main(argv: list[str], error: type[Exception] = runtime.BundleError) -> int:
    """``exitnas_runtime.py profile``: time a kit and write its profile; a bad kit or a taken
    ``--out`` raises ``error`` (the runtime's ``main`` passes its ``BundleError``)."""
    parser = argparse.ArgumentParser(
        prog="exitnas_runtime.py profile",
        description="Time every stage of an exitnas profiling kit with ONNX Runtime.",
    )
    parser.add_argument("kit", help="the kit folder (exitnas profile --kit)")
    parser.add_argument("--out", required=True, help="profile JSON to write (not replaced)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    parser.add_argument("--provider", default="CPUExecutionProvider", help="execution provider")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if out.exists():
        raise error(f"{out} exists; choose another --out (it is not replaced)")
    try:
        profile = profile_kit(
            args.kit,
            batch_sizes=tuple(args.batch_sizes),
            warmup=args.warmup,
            repeats=args.repeats,
            passes=args.passes,
            threads=args.threads,
            providers=[args.provider],
            progress=True,
            error=error,
        )
    except ValueError as err:
        raise error(str(err)) from None
    out.write_text(json.dumps(profile, indent=1, sort_keys=True), encoding="utf-8")
    print(f"wrote {out}: {len(profile['timings'])} stage timings")
    return 0
