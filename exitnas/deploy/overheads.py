"""What ``predict`` costs beyond its stages: measured, so that a latency budget holds.

A stage timing (:func:`~exitnas.devices.profile.measure_stage_latencies`) covers the stage's
forward pass alone. A bundle's ``predict`` also normalises the images, converts each exit's
logits, decides at each exit (a softmax confidence, or the learned policy's classifier, which
scikit-learn runs at a fixed cost per call) and drops the samples that leave. On the
quickstart that was 13-33 % of the measured latency with a confidence rule, and the learned
policy tripled it at batch size 1. :func:`measure_overheads` times ``predict`` end to end on
the profiled configurations with every sample sent to the last exit, subtracts their stage
timings, and fits :class:`~exitnas.devices.profile.RuntimeOverhead` per batch size; the
policy's cost is timed on a stand-in policy of the default estimator (the stored policy may
not be fitted yet, and its cost depends on the estimator, not on what it learned).

Example:
    >>> overheads = measure_overheads(subnets, images, mean, std, timings, batch_sizes=(1, 32))
    >>> profile = DeviceProfile.create(timings, ..., overheads=overheads)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np
import torch

from exitnas.devices.profile import RuntimeOverhead, StageTiming, fit_overhead
from exitnas.exits.policy import StudyPolicy, fit_study_policy
from exitnas.exits.rules import ExitRule
from exitnas.supernet.subnet import ExitViT

__all__ = ["measure_overheads", "standin_policy"]


def standin_policy(num_classes: int, seed: int = 0) -> StudyPolicy:
    """A learned exit policy of the default estimator fitted on synthetic logits: what a
    profile times the policy's per-decision cost with."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, 400)
    logits = rng.normal(size=(3, labels.size, num_classes))
    strength = rng.uniform(0.0, 4.0, size=(3, labels.size))
    logits[:, np.arange(labels.size), labels] += strength
    return fit_study_policy([logits], labels, random_state=seed)


def _ms_per_image(run: Callable[[], Any], images: int, repeats: int) -> float:
    """Median over ``repeats`` of ``run()``'s milliseconds per image (one untimed run first)."""
    run()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        samples.append((time.perf_counter() - start) * 1e3 / images)
    return float(np.median(samples))


def measure_overheads(
    models: Sequence[ExitViT],
    images: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    timings: Sequence[StageTiming],
    *,
    batch_sizes: Sequence[int] = (1, 32),
    repeats: int = 5,
    threads: int | None = None,
    policy: StudyPolicy | None = None,
) -> tuple[RuntimeOverhead, ...]:
    """Time ``ExitModel.predict`` beyond the stages, per batch size.

    Args:
        models: the profiled sub-networks (on the profiled device).
        images: uint8 ``(n, C, H, W)`` images (repeated to fill a batch when fewer).
        mean, std: the data's normalisation.
        timings: the stage timings of ``models`` (:func:`measure_stage_latencies`).
        batch_sizes: batch sizes to measure; each runs ``max(1, 32 // b)`` batches a repeat.
        repeats: timed repeats (the median is kept).
        threads: torch threads while timing (the current count when None).
        policy: the learned policy timed per decision (:func:`standin_policy` by default).

    Returns:
        One :class:`RuntimeOverhead` per batch size.
    """
    from exitnas.deploy.bundle import ExitModel

    if not models:
        return ()
    stage_ms: dict[tuple[str, int], float] = {}  # (config, batch size) -> ms per image
    for t in timings:
        key = (t.config_key, t.batch_size)
        stage_ms[key] = stage_ms.get(key, 0.0) + t.median_ms / t.batch_size
    space = models[0].space
    policy = policy if policy is not None else standin_policy(space.num_classes)
    meta = {
        "normalization": {"mean": list(mean), "std": list(std)},
        "image_size": int(images.shape[-1]),
        "in_chans": int(images.shape[1]),
    }
    previous = torch.get_num_threads()
    overheads = []
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        for bs in batch_sizes:
            n = bs * max(1, 32 // bs)
            batch = images.repeat(-(-n // len(images)), 1, 1, 1)[:n]
            residuals = []
            for model in models:
                key = (model.config.key(), bs)
                if key not in stage_ms:
                    continue
                never = ExitRule("max_softmax", (float("inf"),) * (model.config.num_exits - 1))
                runner = ExitModel(model, never, meta)
                ms = _ms_per_image(partial(runner.predict, batch, batch_size=bs), n, repeats)
                residuals.append((model.config.num_exits, ms - stage_ms[key]))
            if not residuals:
                continue
            history = np.random.default_rng(0).normal(size=(2, bs, space.num_classes))
            policy_ms = _ms_per_image(partial(policy.score_exit, history, 3), bs, 5 * repeats)
            overheads.append(fit_overhead(bs, residuals, policy_ms))
    finally:
        torch.set_num_threads(previous)
    return tuple(overheads)
