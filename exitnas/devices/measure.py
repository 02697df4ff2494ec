"""Timing the stages of extracted sub-networks: the raw milliseconds behind a device profile.

Each stage runs on its own: the state it starts from is produced by the stages before it,
outside the timed region. :func:`time_models` times every stage of several models at several
batch sizes in interleaved passes; :func:`~exitnas.devices.profile.measure_stage_latencies`
validates its arguments and turns these samples into :class:`~exitnas.devices.profile.StageTiming`
records.

Example:
    >>> samples = time_models([model], images, (1, 32), warmup=3, shares=[10])
    >>> samples[0, 32].shape  # (repeats, stages) milliseconds
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from exitnas.supernet.cascade import CascadeState, plan_stages
from exitnas.supernet.subnet import ExitViT

__all__ = ["time_models"]


def _batch(images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """``batch_size`` images taken from ``images``, repeated cyclically when there are fewer."""
    reps = -(-batch_size // images.shape[0])
    return images.repeat(reps, 1, 1, 1)[:batch_size].contiguous()


def _time_stages(
    model: ExitViT, images: torch.Tensor, batch_size: int, warmup: int, repeats: int
) -> np.ndarray:
    """``(repeats, stages)`` milliseconds of every stage of ``model`` at ``batch_size``.

    The input state of each stage is produced by running the stages before it, untimed; then
    every stage runs ``warmup`` times untimed and ``repeats`` times timed, round-robin over the
    stages (a burst of load from another process is spread over all of them).
    """
    stages = plan_stages(model.config)
    device = next(model.parameters()).device
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    states = [CascadeState(images=_batch(images, batch_size).to(device))]
    for stage in stages:  # each stage's input, prepared untimed
        states.append(model.run_stage(stage, states[-1]))
    for _ in range(warmup):
        for stage, state in zip(stages, states, strict=False):
            model.run_stage(stage, state)
    sync()
    samples = np.zeros((repeats, len(stages)))
    for r in range(repeats):
        for i, (stage, state) in enumerate(zip(stages, states, strict=False)):
            start = time.perf_counter()
            model.run_stage(stage, state)
            sync()
            samples[r, i] = (time.perf_counter() - start) * 1e3
    return samples


def time_models(
    models: Sequence[ExitViT],
    images: torch.Tensor,
    batch_sizes: Sequence[int],
    *,
    warmup: int,
    shares: Sequence[int],
    threads: int | None = None,
    progress: Callable[[], None] | None = None,
) -> dict[tuple[int, int], np.ndarray]:
    """Time every stage of every model at each batch size, in passes over all models.

    Pass ``p`` times each (model, batch size) ``shares[p]`` times after ``warmup`` untimed runs,
    in eval mode under ``torch.inference_mode()``. Training flags and torch's thread count are
    restored.

    Args:
        models: extracted sub-networks (on the device to profile).
        images: ``(n, in_chans, H, W)`` normalised images, repeated or cut to each batch size.
        batch_sizes: batch sizes to time.
        warmup: untimed runs of every stage before timing, at each batch size and pass.
        shares: timed runs of each pass.
        threads: torch intra-op threads while timing; the current count when None.
        progress: called after each model's share of a pass.

    Returns:
        ``(model index, batch size) -> (sum(shares), stages)`` milliseconds.
    """
    samples: dict[tuple[int, int], list[np.ndarray]] = {
        (i, bs): [] for i in range(len(models)) for bs in batch_sizes
    }
    previous_threads = torch.get_num_threads()
    was_training = [model.training for model in models]
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        with torch.inference_mode():
            for share in shares:
                for i, model in enumerate(models):
                    model.eval()
                    for bs in batch_sizes:
                        samples[i, bs].append(_time_stages(model, images, bs, warmup, share))
                    if progress is not None:
                        progress()
    finally:
        torch.set_num_threads(previous_threads)
        for model, training in zip(models, was_training, strict=True):
            model.train(training)
    return {key: np.concatenate(runs) for key, runs in samples.items()}
