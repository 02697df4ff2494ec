"""Measured latency of each stage of a sub-network on one device.

A sample that leaves at exit *k* pays stages 1..k, so the latency model works per stage.
:func:`measure_stage_latencies` times each stage of an extracted :class:`ExitViT` on its own
(the state it starts from is prepared outside the timed region, :mod:`~exitnas.devices.measure`)
at a few batch sizes, and
records, beside the timings, the stage's descriptive features (FLOPs, blocks, tokens, head...)
that :class:`~exitnas.devices.latency.StageLatencyModel` learns from. A
:class:`DeviceProfile` bundles the timings with the host they were taken on and saves as JSON.

Example:
    >>> model = SuperViT(space).extract(config)
    >>> timings = measure_stage_latencies(model, images, batch_sizes=(1, 32), threads=2)
    >>> profile = DeviceProfile.create(timings, device="cpu", study_key=key, weights_hash=h)
    >>> profile.save("profiles/cpu.json")
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from exitnas.devices.errors import ProfileError
from exitnas.devices.measure import time_models
from exitnas.spaces import SearchSpace, SubnetConfig
from exitnas.supernet.cascade import plan_stages
from exitnas.supernet.checkpoint import atomic_write
from exitnas.supernet.flops import count_flops
from exitnas.supernet.subnet import ExitViT
from exitnas.supernet.tokens import informative_count, kept_count

__all__ = [
    "DeviceProfile",
    "HostInfo",
    "ProfileError",
    "RuntimeOverhead",
    "StageFeatures",
    "StageTiming",
    "fit_overhead",
    "measure_stage_latencies",
    "stage_features",
]

PROFILE_FORMAT = "exitnas.device_profile"
PROFILE_VERSION = 2  # 2: stage features gained keeps and reuses


@dataclass(frozen=True)
class StageFeatures:
    """What one stage of a config does, at one batch size: the latency model's inputs."""

    config_key: str  # SubnetConfig.key() of the config the stage belongs to
    stage: int  # index of the stage in cascade order (0-based)
    batch_size: int  # images run through the stage at once
    flops: int  # analytic FLOPs per image of the stage (count_flops)
    blocks: int  # backbone blocks the stage runs
    tokens: int  # sequence length entering the first block (class token + patch tokens)
    opens_branch: bool  # the stage embeds a new branch (and its reuse of the previous one)
    grid: int  # tokens per side of the branch's full grid
    head: str  # head type of the stage's exit
    keep_rate: float  # the branch's EViT keep rate (1.0: no token dropping)
    refine_fraction: float  # the branch's CF-ViT re-split fraction, 0.0 for a full grid
    embed_dim: int  # width of the backbone
    keeps: int  # token-keeping steps (EViT top-k and fusion) inside the stage
    reuses: bool  # the stage opens a branch that takes in the previous branch's class token

    def signature(self) -> tuple:
        """Identity of the stage's workload regardless of batch size (for grouped splits)."""
        skip = {"config_key", "stage", "batch_size"}
        return tuple(getattr(self, f.name) for f in fields(StageFeatures) if f.name not in skip)


@dataclass(frozen=True)
class StageTiming(StageFeatures):
    """Measured wall-clock latency of one stage at one batch size, in milliseconds."""

    median_ms: float  # median of the timed runs
    p10_ms: float  # 10th percentile of the timed runs
    p90_ms: float  # 90th percentile of the timed runs


@dataclass(frozen=True)
class RuntimeOverhead:
    """Milliseconds per image a runtime spends outside the timed stages, at one batch size.

    ``predict`` also normalises the images, moves each stage's outputs, decides at each exit
    and drops the samples that leave; a stage timing holds none of it. An image that leaves at
    exit k costs ``fixed_ms + sum over stages 0..k of (stage + stage_ms)``, plus ``policy_ms``
    for each of its exit decisions when the rule is the learned policy.
    """

    batch_size: int
    fixed_ms: float  # once per image: normalising, the batch loop
    stage_ms: float  # per stage run: its outputs, the exit decision of a confidence rule
    policy_ms: float  # per exit decision of the learned policy, beyond a confidence rule's


def fit_overhead(
    batch_size: int, residuals: Sequence[tuple[int, float]], policy_ms: float = 0.0
) -> RuntimeOverhead:
    """The :class:`RuntimeOverhead` of measured residuals (``predict`` minus its stages).

    Args:
        batch_size: the batch size they were measured at.
        residuals: ``(stages, ms per image)`` of configs run to their last exit by a
            confidence rule, fitted as ``fixed + stages x per stage`` (both non-negative; the
            ONNX runtime's ``fit_overhead`` is the same fit without exitnas).
        policy_ms: the learned policy's measured ms per image and exit decision.
    """
    if not residuals:
        raise ValueError("fit_overhead needs at least one residual")
    stages = np.array([n for n, _ in residuals], dtype=float)
    ms = np.array([r for _, r in residuals], dtype=float)
    # one stage count: fixed and per-stage costs cannot be told apart; all per stage
    fixed, per_stage = 0.0, max(0.0, float(np.median(ms / stages)))
    if np.unique(stages).size > 1:
        design = np.stack([np.ones_like(stages), stages], 1)
        (fixed, per_stage), *_ = np.linalg.lstsq(design, ms, rcond=None)
        if per_stage < 0:  # the non-negative least squares: one of the two is zero
            fixed, per_stage = max(0.0, float(ms.mean())), 0.0
        elif fixed < 0:
            fixed, per_stage = 0.0, max(0.0, float(stages @ ms / (stages @ stages)))
    return RuntimeOverhead(batch_size, float(fixed), float(per_stage), max(0.0, policy_ms))


def stage_features(
    space: SearchSpace, config: SubnetConfig, batch_size: int = 1
) -> list[StageFeatures]:
    """Describe every stage of ``config`` (no measurement): what the latency model predicts from.

    Args:
        space: the search space ``config`` belongs to.
        config: the sub-network.
        batch_size: batch size the stages run at.

    Returns:
        One :class:`StageFeatures` per stage, in cascade order.
    """
    flops = count_flops(space, config)
    keep_layers = set(space.keep_layers)
    key = config.key()
    out: list[StageFeatures] = []
    tokens = 0  # patch tokens of the current branch (mirrors count_flops)
    for i, stage in enumerate(plan_stages(config)):
        branch = config.branches[stage.branch]
        if stage.start == 0:
            tokens = branch.grid**2
            if branch.refine_fraction is not None:
                prev = config.branches[stage.branch - 1]
                split = informative_count(branch.refine_fraction, prev.grid**2)
                scale = branch.grid // prev.grid
                tokens = prev.grid**2 - split + split * scale * scale
        entering = tokens + 1
        keeps = 0
        for layer in range(stage.start, stage.end):
            if layer + 1 in keep_layers and branch.keep_rate < 1.0:
                kept = kept_count(branch.keep_rate, tokens)
                tokens = kept + 1 if kept < tokens else tokens
                keeps += 1
        out.append(
            StageFeatures(
                config_key=key,
                stage=i,
                batch_size=batch_size,
                flops=flops[i],
                blocks=stage.end - stage.start,
                tokens=entering,
                opens_branch=stage.start == 0,
                grid=branch.grid,
                head=branch.exits[stage.exit].head,
                keep_rate=branch.keep_rate,
                refine_fraction=branch.refine_fraction or 0.0,
                embed_dim=space.backbone.embed_dim,
                keeps=keeps,
                reuses=stage.start == 0 and stage.branch > 0 and config.reuse,
            )
        )
    return out


def measure_stage_latencies(
    models: ExitViT | Sequence[ExitViT],
    images: torch.Tensor,
    *,
    batch_sizes: Sequence[int] = (1, 32),
    warmup: int = 3,
    repeats: int = 10,
    threads: int | None = None,
    passes: int = 1,
    progress: Callable[[], None] | None = None,
) -> list[StageTiming]:
    """Time every stage of one or several sub-networks on their own, at each batch size.

    Each stage's input is prepared outside the timed region; each (stage, batch size) is timed
    ``repeats`` times after ``warmup`` untimed runs, in eval mode under
    ``torch.inference_mode()``. With several models and ``passes > 1`` the repeats are split
    into passes over all models, so a slow drift of the machine's speed (other tenants, clock
    changes: seconds long, +-10 % on a shared 2-core VM) lands on every model alike instead of
    on the few measured while it lasted. Training flags and torch's thread count are restored.

    Args:
        models: extracted sub-networks (on the device to profile).
        images: ``(n, in_chans, H, W)`` normalised images, repeated or cut to each batch size.
        batch_sizes: batch sizes to time.
        warmup: untimed runs of every stage before timing, at each batch size and pass.
        repeats: timed runs of each (stage, batch size); at least ``passes``.
        threads: torch intra-op threads while timing; the current count when None.
        passes: interleaved passes over the models the repeats are split into.
        progress: called after each model's share of a pass.

    Returns:
        One :class:`StageTiming` per (model, batch size, stage), in model order, then batch
        size, then cascade order.
    """
    models = [models] if isinstance(models, ExitViT) else list(models)
    if repeats < 1 or warmup < 0 or not 1 <= passes <= repeats:
        raise ValueError(
            f"need repeats >= 1, warmup >= 0 and 1 <= passes <= repeats; got repeats={repeats}, "
            f"warmup={warmup}, passes={passes}"
        )
    if not batch_sizes or min(batch_sizes) < 1:
        raise ValueError(f"batch_sizes must be positive, got {tuple(batch_sizes)}")
    shares = [repeats // passes + (p < repeats % passes) for p in range(passes)]
    samples = time_models(
        models,
        images,
        batch_sizes,
        warmup=warmup,
        shares=shares,
        threads=threads,
        progress=progress,
    )
    timings: list[StageTiming] = []
    for i, model in enumerate(models):
        for bs in batch_sizes:
            times = samples[i, bs]
            p10, median, p90 = np.percentile(times, [10, 50, 90], axis=0)
            for k, feats in enumerate(stage_features(model.space, model.config, bs)):
                timings.append(
                    StageTiming(
                        **asdict(feats),
                        median_ms=float(median[k]),
                        p10_ms=float(p10[k]),
                        p90_ms=float(p90[k]),
                    )
                )
    return timings


@dataclass(frozen=True)
class HostInfo:
    """The machine a profile was measured on."""

    platform: str  # platform.platform(), e.g. "Linux-6.1-x86_64-with-glibc2.36"
    processor: str  # platform.processor() or machine type
    cpu_count: int  # logical CPUs visible to the process
    torch_version: str  # torch.__version__
    threads: int  # torch intra-op threads used while timing

    @classmethod
    def current(cls, threads: int | None = None) -> HostInfo:
        """Describe this machine; ``threads`` defaults to torch's current thread count."""
        return cls(
            platform=platform.platform(),
            processor=platform.processor() or platform.machine(),
            cpu_count=os.cpu_count() or 0,
            torch_version=torch.__version__,
            threads=threads if threads is not None else torch.get_num_threads(),
        )


@dataclass(frozen=True)
class DeviceProfile:
    """Per-stage timings of sub-networks of one study on one device, with their provenance."""

    device: str  # name of the device profiled, e.g. "cpu", "cuda:0 (NVIDIA H100)"
    host: HostInfo  # the machine the timings were taken on
    study_key: str  # StudyConfig.key() of the study whose space was profiled
    weights_hash: str  # hash of the supernet weights ("" when untrained: latency ignores them)
    created: str  # ISO 8601 UTC time of creation
    timings: tuple[StageTiming, ...]  # every measured (stage, batch size)
    overheads: tuple[RuntimeOverhead, ...] = ()  # per batch size; none in older profiles
    runtime: str = "torch"  # what ran the stages: torch (eager) or onnxruntime <provider>

    @classmethod
    def create(
        cls,
        timings: Sequence[StageTiming],
        *,
        device: str,
        study_key: str,
        weights_hash: str = "",
        threads: int | None = None,
        overheads: Sequence[RuntimeOverhead] = (),
        runtime: str = "torch",
    ) -> DeviceProfile:
        """A profile of ``timings`` taken now on this host.

        Args:
            timings: from :func:`measure_stage_latencies`.
            device: name of the device profiled.
            study_key: key of the study whose space was profiled.
            weights_hash: hash of the supernet weights, if any.
            threads: torch threads used while timing (torch's current count by default).
            overheads: the runtime's cost outside the stages, per batch size.
            runtime: what ran the stages (``torch``, ``onnxruntime <provider>``).
        """
        return cls(
            device=device,
            host=HostInfo.current(threads),
            study_key=study_key,
            weights_hash=weights_hash,
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            timings=tuple(timings),
            overheads=tuple(overheads),
            runtime=runtime,
        )

    def to_json(self) -> str:
        """The profile as a JSON document (with a format tag and version)."""
        data: dict[str, Any] = {"format": PROFILE_FORMAT, "version": PROFILE_VERSION}
        data.update(asdict(self))
        return json.dumps(data, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str = "profile") -> DeviceProfile:
        """Parse :meth:`to_json`'s output.

        Raises:
            ProfileError: ``text`` is not JSON or not a device profile of this version.
        """
        try:
            data = json.loads(text)
        except ValueError as err:
            raise ProfileError(f"{where} is not valid JSON ({err})") from None
        if not isinstance(data, dict) or data.get("format") != PROFILE_FORMAT:
            raise ProfileError(f"{where} is not an exitnas device profile")
        if data.get("version") != PROFILE_VERSION:
            raise ProfileError(
                f"{where} has profile version {data.get('version')!r}; "
                f"this exitnas reads version {PROFILE_VERSION}"
            )
        try:
            return cls(
                device=str(data["device"]),
                host=HostInfo(**data["host"]),
                study_key=str(data["study_key"]),
                weights_hash=str(data["weights_hash"]),
                created=str(data["created"]),
                timings=tuple(StageTiming(**t) for t in data["timings"]),
                overheads=tuple(RuntimeOverhead(**o) for o in data.get("overheads", ())),
                runtime=str(data.get("runtime", "torch")),
            )
        except (KeyError, TypeError) as err:
            raise ProfileError(f"{where} is corrupt or incomplete ({err!r})") from None

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> None:
        """Write the profile atomically (temporary file, then rename).

        Raises:
            ProfileError: ``path`` exists and ``overwrite`` is False.
        """
        path = Path(path)
        if path.exists() and not overwrite:
            raise ProfileError(f"{path} exists; choose another file (it is not replaced)")
        text = self.to_json()
        try:
            atomic_write(path, lambda tmp: Path(tmp).write_text(text))
        except OSError as err:
            raise ProfileError(f"cannot write {path}: {err.strerror or err}") from None

    @classmethod
    def load(cls, path: str | os.PathLike) -> DeviceProfile:
        """Read a profile written by :meth:`save`.

        Raises:
            ProfileError: the file is missing, unreadable, corrupt or not a device profile.
        """
        path = Path(path)
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as err:
            raise ProfileError(f"cannot read device profile {path} ({err})") from None
        return cls.from_json(text, where=str(path))
