"""The search objective: a trial's sub-network and exit rule, scored on cached logits."""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import optuna
import torch

from exitnas.data import DataSplits, load_splits
from exitnas.exits.rules import ExitOutcome, ExitRule, ExitTable
from exitnas.faults import kill_point
from exitnas.search.encoding import suggest
from exitnas.spaces import SearchSpace, StudyConfig, SubnetConfig
from exitnas.storage.store import CachedEvaluation, EvaluationStore
from exitnas.storage.urls import open_store
from exitnas.supernet import SuperViT, count_flops, load_supernet
from exitnas.supernet.checkpoint import file_sha256
from exitnas.supernet.evaluate import predict_exits
from exitnas.supernet.train import WEIGHTS

__all__ = [
    "TRIAL_ATTR",
    "ArchitectureEvaluator",
    "SearchObjective",
    "StageLatency",
    "evaluation_key",
    "evaluator_on",
    "load_evaluator",
    "load_latency",
    "load_validation",
    "objective_values",
]

TRIAL_ATTR = "exitnas"  # the one user attribute a trial carries (exit fractions, cache hit)


class ArchitectureEvaluator:
    """Per-process access to every architecture's validation logits.

    An architecture's logits are computed once (one validation pass of the supernet under
    that config), stored in the study's database, and kept in memory as an :class:`ExitTable`
    (least recently used first out), so scoring another exit rule on it costs microseconds.

    Args:
        model: the trained supernet.
        images: uint8 validation images.
        labels: validation labels.
        mean, std: the data's normalisation.
        store: the database cache.
        weights_hash: hash of the supernet weights and the validation split (the cache's
            second key, :func:`~exitnas.search.runner.evaluation_key`).
        memory: architectures kept in memory.
    """

    def __init__(
        self,
        model: SuperViT,
        images: torch.Tensor,
        labels: torch.Tensor,
        mean: Sequence[float],
        std: Sequence[float],
        store: EvaluationStore,
        weights_hash: str,
        memory: int = 256,
    ):
        self.model, self.images, self.labels = model, images, labels.numpy()
        self.mean, self.std = mean, std
        self.store, self.weights_hash, self.memory = store, weights_hash, memory
        self._tables: OrderedDict[str, ExitTable] = OrderedDict()
        self.hits = self.misses = 0
        self.miss_seconds = 0.0

    def logits(self, config: SubnetConfig) -> tuple[np.ndarray, bool]:
        """Validation logits ``(E, N, K)`` of ``config`` and whether they came from the cache."""
        cached = self.store.get(config.key(), self.weights_hash)
        if cached is not None:
            return cached.logits, True
        start = time.perf_counter()
        logits = predict_exits(self.model, self.images, self.mean, self.std, config=config)
        seconds = time.perf_counter() - start
        self.miss_seconds += seconds
        kill_point("evaluated-not-cached")
        entry = CachedEvaluation(config.key(), self.weights_hash, config.to_json(), logits, seconds)
        self.store.put(entry)
        kill_point("cache-row-written")
        return logits, False

    def table(self, config: SubnetConfig) -> tuple[ExitTable, bool]:
        """The :class:`ExitTable` of ``config`` and whether it was cached (memory or database)."""
        key = config.key()
        if key in self._tables:
            self._tables.move_to_end(key)
            self.hits += 1
            return self._tables[key], True
        logits, hit = self.logits(config)
        self.hits += hit
        self.misses += not hit
        table = ExitTable(logits, self.labels, count_flops(self.model.space, config))
        self._tables[key] = table
        if len(self._tables) > self.memory:
            self._tables.popitem(last=False)
        return table, hit

    def score(self, config: SubnetConfig, rule: ExitRule) -> ExitOutcome:
        return self.table(config)[0].score(rule)


class StageLatency(Protocol):
    """Milliseconds per image of each stage of a config on one device (``DeviceCosts``)."""

    def stage_ms(self, space: SearchSpace, config: SubnetConfig) -> tuple[np.ndarray, Any]: ...


def objective_values(outcome: ExitOutcome, stage_ms: np.ndarray | None = None) -> tuple[float, ...]:
    """(accuracy, expected MFLOPs per image[, expected ms per image on the device])."""
    values: tuple[float, ...] = (outcome.accuracy, outcome.expected_flops / 1e6)
    if stage_ms is not None:
        values += (float(np.dot(outcome.exit_fractions, np.cumsum(stage_ms))),)
    return values


class SearchObjective:
    """Optuna objective: (validation accuracy, expected MFLOPs per image), plus the expected
    latency per image on a profiled device when ``latency`` is given.

    The trial's parameters define the config and rule (rebuild them with
    ``suggest(FixedTrial(trial.params), space, rules)``); one user attribute records the exit
    distribution and whether the architecture was cached. ``space`` narrows the supernet's
    space (it must be a subset of it: the benchmark's ablations search one supernet that way).
    """

    def __init__(
        self,
        evaluator: ArchitectureEvaluator,
        rules: Sequence[str],
        latency: StageLatency | None = None,
        space: SearchSpace | None = None,
    ):
        self.evaluator, self.rules, self.latency = evaluator, tuple(rules), latency
        self.space = space or evaluator.model.space  # a narrower space: an ablation

    def __call__(self, trial: optuna.trial.BaseTrial) -> tuple[float, ...]:
        config, rule = suggest(trial, self.space, self.rules)
        table, hit = self.evaluator.table(config)
        outcome = table.score(rule)
        trial.set_user_attr(
            TRIAL_ATTR, {"exit_fractions": list(outcome.exit_fractions), "cache_hit": hit}
        )
        stage_ms = None
        if self.latency is not None:
            stage_ms = self.latency.stage_ms(self.evaluator.model.space, config)[0]
        return objective_values(outcome, stage_ms)


def load_validation(study: StudyConfig, progress: bool = True) -> DataSplits:
    """The study's data splits (search, export and report use only ``val``); ``progress``:
    a bar while images are decoded."""
    data = study.data
    return load_splits(
        data.dataset,
        data.path,
        data.image_size,
        data.val_fraction,
        study.seed,
        download=data.download,
        in_chans=study.space.in_chans,
        num_classes=study.space.num_classes,
        progress=progress,
    )


def evaluation_key(run_dir: Path, splits: DataSplits, weights_sha256: str | None = None) -> str:
    """Hash of the supernet weights and the validation split: the cache's second key.

    Args:
        weights_sha256: the weights file's sha256 when the caller has it (else it is hashed).
    """
    weights = weights_sha256 or file_sha256(run_dir / WEIGHTS)
    digest = hashlib.sha256(weights.encode())
    digest.update(splits.val.images.numpy().tobytes())
    digest.update(splits.val.labels.numpy().tobytes())
    return digest.hexdigest()


def load_evaluator(
    study: StudyConfig, run_dir: Path, url: str, splits: DataSplits | None = None
) -> ArchitectureEvaluator:
    """Supernet, validation split and cache of one process."""
    model, _ = load_supernet(run_dir, study)
    splits = splits or load_validation(study)
    return evaluator_on(model, splits, open_store(url), evaluation_key(run_dir, splits))


def evaluator_on(
    model: SuperViT, splits: DataSplits, store: EvaluationStore, key: str
) -> ArchitectureEvaluator:
    """The evaluator of ``model`` on the validation split of ``splits``, cached in ``store``
    under the evaluation ``key`` (:func:`evaluation_key`)."""
    return ArchitectureEvaluator(
        model, splits.val.images, splits.val.labels, splits.mean, splits.std, store, key
    )


def load_latency(study: StudyConfig, url: str, device: str | None):
    """The stored profile of ``device`` as per-stage costs (None without a device)."""
    if device is None:
        return None
    from exitnas.devices.costs import load_device_costs

    return load_device_costs(open_store(url), study, device, url)
