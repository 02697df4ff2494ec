"""Samplers: ``create_sampler("nsga2" | "tpe" | "random", seed)``, seeded per trial.

Every trial's random choices derive from ``(seed, trial number)``: the wrapped sampler is
re-created, seeded that way, before each trial. Trial numbers are unique within a study, so
processes sharing a study (``--workers``, or commands started by hand) never draw the same
trial, and a single-process study is reproducible from its seed. The wrapped samplers keep
no state between trials beyond what the study stores, so re-creating them loses nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

from exitnas.errors import ConfigError
from exitnas.spaces.study import SAMPLERS

__all__ = ["SAMPLERS", "TrialSeededSampler", "create_sampler"]


def _build(name: str, seed: int, population_size: int) -> BaseSampler:
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=population_size, seed=seed)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


class TrialSeededSampler(BaseSampler):
    """Delegate to a sampler re-created for every trial with seed ``(seed, trial number)``.

    Args:
        name: the wrapped sampler, one of :data:`SAMPLERS`.
        seed: the study's seed.
        population_size: NSGA-II's generation size.
    """

    def __init__(self, name: str, seed: int, population_size: int = 50):
        if name not in SAMPLERS:
            raise ConfigError(f"sampler: {name!r} is not allowed; allowed: {SAMPLERS}")
        self._name, self._seed, self._population = name, seed, population_size
        self._inner = _build(name, seed, population_size)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        state = np.random.SeedSequence([self._seed, trial.number]).generate_state(1)[0]
        self._inner = _build(self._name, int(state), self._population)
        self._inner.before_trial(study, trial)

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return self._inner.infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self._inner.sample_relative(study, trial, search_space)

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        return self._inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        self._inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._inner.reseed_rng()


def create_sampler(name: str, seed: int, population_size: int = 50) -> TrialSeededSampler:
    """``nsga2`` (default), ``tpe`` (multi-objective) or ``random``, seeded per trial."""
    return TrialSeededSampler(name, seed, population_size)
