"""Running an exported bundle: verified loading and real batched early exit.

Example:
    >>> model = exitnas.load("bundles/quickstart")
    >>> prediction = model.predict(images)  # uint8 (N, C, H, W)
    >>> prediction.labels, prediction.exits, prediction.flops
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from exitnas.deploy.format import BUNDLE_FORMAT, POLICY_FILE
from exitnas.errors import CheckpointError, ConfigError, ExitnasError
from exitnas.exits.rules import LEARNED, ExitRule
from exitnas.exits.scoring import exit_policy
from exitnas.spaces import SearchSpace, SubnetConfig
from exitnas.spaces._parse import from_dict
from exitnas.supernet.batches import normalize
from exitnas.supernet.cascade import CascadeState, plan_stages
from exitnas.supernet.checkpoint import file_sha256, load_weights
from exitnas.supernet.evaluate import predict_exits
from exitnas.supernet.flops import count_flops
from exitnas.supernet.subnet import ExitViT

__all__ = ["BundleError", "ExitModel", "Prediction", "load"]


class BundleError(ExitnasError):
    """A bundle that is incomplete, tampered with, of an unknown format, or fed wrong images."""


@dataclass(frozen=True)
class Prediction:
    """What early exit decided for each sample."""

    labels: np.ndarray  # (N,) predicted class
    exits: np.ndarray  # (N,) index of the exit taken, in cascade order
    flops: np.ndarray  # (N,) analytic FLOPs spent on the sample (stages 1..exit)


class ExitModel:
    """A loaded bundle: the sub-network, its exit rule and its metadata.

    Args:
        model: the sub-network (put in eval mode).
        rule: the exit rule.
        meta: the bundle's ``config.json``.
        policy: the learned exit policy (``policy.skops``), needed when ``rule.rule`` is
            ``"learned"``.
    """

    def __init__(self, model: ExitViT, rule: ExitRule, meta: dict[str, Any], policy: Any = None):
        if rule.rule == LEARNED and policy is None:
            raise BundleError("the learned exit rule needs the bundle's policy")
        self.scorer = exit_policy(rule.rule, policy)
        self.model = model.eval()
        self.config: SubnetConfig = model.config
        self.rule = rule
        self.meta = meta
        self.policy = policy
        norm = meta["normalization"]
        self.mean, self.std = tuple(norm["mean"]), tuple(norm["std"])
        self.cumulative_flops = np.cumsum(count_flops(model.space, model.config))

    def _check(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        tensor = torch.as_tensor(images)
        size, chans = int(self.meta["image_size"]), int(self.meta["in_chans"])
        expected = ("uint8", chans, size, size)
        got = (str(tensor.dtype).removeprefix("torch."), *tensor.shape[1:])
        if tensor.ndim != 4 or got != expected:
            raise BundleError(
                f"images: expected uint8 (N, {chans}, {size}, {size}), got "
                f"{got[0]} {tuple(tensor.shape)}"
            )
        return tensor

    def logits(self, images: np.ndarray | torch.Tensor, batch_size: int = 256) -> np.ndarray:
        """Logits of every exit for uint8 ``images`` ``(N, C, H, W)``: ``(E, N, K)``."""
        return predict_exits(
            self.model, self._check(images), self.mean, self.std, batch_size=batch_size
        )

    @torch.no_grad()
    def predict(self, images: np.ndarray | torch.Tensor, batch_size: int = 256) -> Prediction:
        """Classify uint8 ``images`` with real early exit.

        Each batch runs stage by stage; after a stage, the samples whose confidence (or learned
        policy score) reaches that exit's threshold leave the batch (the last exit takes all
        that remain), so later stages run on fewer samples. The rule's scorer
        (:func:`~exitnas.exits.scoring.exit_policy`) sees the logits of every exit so far.
        """
        images = self._check(images)
        n = len(images)
        labels = np.zeros(n, np.int64)
        exits = np.zeros(n, np.int64)
        stages = plan_stages(self.config)
        device = next(self.model.parameters()).device
        for start in range(0, n, batch_size):
            batch = normalize(images[start : start + batch_size].to(device), self.mean, self.std)
            state = CascadeState(images=batch)
            rows = np.arange(start, start + len(batch))  # dataset rows still in the batch
            history: list[np.ndarray] = []  # the exits' logits so far, of those rows
            for k, stage in enumerate(stages):
                state = self.model.run_stage(stage, state)
                assert state.logits is not None
                logits = state.logits.float().cpu().numpy()  # (B, K)
                history.append(logits)
                if k == len(stages) - 1:
                    leave = np.ones(len(rows), dtype=bool)
                else:
                    scores = self.scorer.score_exit(np.stack(history), len(stages))
                    leave = scores >= self.rule.thresholds[k]
                labels[rows[leave]] = logits[leave].argmax(-1)
                exits[rows[leave]] = k
                rows = rows[~leave]
                if len(rows) == 0:
                    break
                history = [h[~leave] for h in history]
                state = state.select(torch.from_numpy(~leave).to(device))
        return Prediction(labels, exits, self.cumulative_flops[exits].astype(np.int64))


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise BundleError(f"{path.parent} is not an exitnas bundle (missing {path.name})")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise BundleError(f"{path} is unreadable: {err}") from None
    if not isinstance(data, dict):
        raise BundleError(f"{path} is not a JSON object")
    if data.get("format") != BUNDLE_FORMAT:
        raise BundleError(
            f"{path}: bundle format {data.get('format')!r} is not supported; this exitnas "
            f"reads format {BUNDLE_FORMAT}"
        )
    return data


def load(bundle_dir: str | os.PathLike[str], device: str = "cpu") -> ExitModel:
    """Load a bundle written by ``exitnas export``, checking every file against its manifest.

    Args:
        bundle_dir: the bundle folder.
        device: where the sub-network runs.

    Returns:
        The :class:`ExitModel`, in eval mode.

    Raises:
        BundleError: a missing or tampered file, or an unknown format version.
    """
    folder = Path(bundle_dir)
    manifest = _read_json(folder / "manifest.json")
    files = manifest.get("files", {})
    for name in ("config.json", "weights.safetensors"):
        if name not in files:
            raise BundleError(f"{folder / 'manifest.json'} does not list {name}")
    for name, entry in files.items():
        path = folder / name
        if not path.is_file():
            raise BundleError(f"{path} is missing from the bundle")
        if path.stat().st_size != entry.get("size") or file_sha256(path) != entry.get("sha256"):
            raise BundleError(f"{path} does not match manifest.json (modified or corrupt)")
    meta = _read_json(folder / "config.json")
    try:
        space = from_dict(SearchSpace, meta["space"], "space")
        config = SubnetConfig.from_dict(meta["config"])
        rule = ExitRule.from_dict(meta["rule"])
        if len(rule.thresholds) != config.num_exits - 1:
            raise ConfigError(
                f"rule: {config.num_exits} exits need {config.num_exits - 1} thresholds"
            )
        tensors, _ = load_weights(folder / "weights.safetensors")
        model = ExitViT(space, config)
        model.load_state_dict(tensors)
    except (KeyError, ValueError, TypeError, ConfigError, CheckpointError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise BundleError(f"{folder} is not a valid bundle: {first}") from None
    policy = None
    if rule.rule == LEARNED:
        from exitnas.exits.options import PolicyError
        from exitnas.exits.policy import policy_from_bytes

        if POLICY_FILE not in files:
            raise BundleError(f"{folder}: the learned exit rule needs {POLICY_FILE}")
        path = folder / POLICY_FILE
        try:
            policy = policy_from_bytes(path.read_bytes(), str(path))
        except PolicyError as err:
            raise BundleError(str(err)) from None
        except OSError as err:
            raise BundleError(f"cannot read {path}: {err.strerror or err}") from None
    return ExitModel(model.to(torch.device(device)), rule, meta, policy)
