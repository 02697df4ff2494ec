"""Multi-objective search over sub-networks and exit thresholds, and its Pareto front.

The objective (:mod:`~exitnas.search.objective`) scores one trial's configuration and exit
rule on cached per-exit logits; :mod:`~exitnas.search.studies` creates and checks the Optuna
study of a run; :mod:`~exitnas.search.runner` runs it behind one backend interface (Optuna
processes or Ray Tune); :mod:`~exitnas.search.front` reads the Pareto front back and
:mod:`~exitnas.search.budget` answers budget queries on it. Names are imported on first use
(:mod:`exitnas._lazy`): importing the package loads neither Optuna, SQLAlchemy nor torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from exitnas._lazy import lazy_exports

if TYPE_CHECKING:
    from exitnas.search.backends import SearchBackend
    from exitnas.search.encoding import suggest, trial_config
    from exitnas.search.interrupts import SearchInterrupted
    from exitnas.search.objective import ArchitectureEvaluator, SearchObjective
    from exitnas.search.pareto import hypervolume_2d, pareto_mask
    from exitnas.search.runner import SearchSummary, create_backend, run_search
    from exitnas.search.samplers import create_sampler
    from exitnas.search.studies import open_study

__all__ = [
    "ArchitectureEvaluator",
    "SearchBackend",
    "SearchInterrupted",
    "SearchObjective",
    "SearchSummary",
    "create_backend",
    "create_sampler",
    "hypervolume_2d",
    "open_study",
    "pareto_mask",
    "run_search",
    "suggest",
    "trial_config",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "exitnas.search.backends": ("SearchBackend",),
        "exitnas.search.interrupts": ("SearchInterrupted",),
        "exitnas.search.objective": ("ArchitectureEvaluator", "SearchObjective"),
        "exitnas.search.pareto": ("hypervolume_2d", "pareto_mask"),
        "exitnas.search.runner": ("SearchSummary", "create_backend", "run_search"),
        "exitnas.search.samplers": ("create_sampler",),
        "exitnas.search.studies": ("open_study",),
        "exitnas.search.encoding": ("suggest", "trial_config"),
    },
)
