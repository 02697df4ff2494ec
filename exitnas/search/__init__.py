"""Multi-objective search over sub-networks and exit thresholds, with Pareto export.

Names are imported on first use (:mod:`exitnas._lazy`): importing the package, or its
command-line module, loads neither Optuna, SQLAlchemy nor torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from exitnas._lazy import lazy_exports

if TYPE_CHECKING:
    from exitnas.search.objective import ArchitectureEvaluator, SearchObjective
    from exitnas.search.pareto import hypervolume_2d, pareto_mask
    from exitnas.search.rules import RULES, ExitOutcome, ExitRule, ExitTable
    from exitnas.search.runner import SearchInterrupted, SearchSummary, open_study, run_search
    from exitnas.search.samplers import create_sampler
    from exitnas.search.space import suggest, trial_config
    from exitnas.search.storage import StorageError, default_storage_url, open_storage
    from exitnas.search.store import CachedEvaluation, EvaluationStore, SqlStore

__all__ = [
    "RULES",
    "ArchitectureEvaluator",
    "CachedEvaluation",
    "EvaluationStore",
    "ExitOutcome",
    "ExitRule",
    "ExitTable",
    "SearchInterrupted",
    "SearchObjective",
    "SearchSummary",
    "SqlStore",
    "StorageError",
    "create_sampler",
    "default_storage_url",
    "hypervolume_2d",
    "open_storage",
    "open_study",
    "pareto_mask",
    "run_search",
    "suggest",
    "trial_config",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "exitnas.search.objective": ("ArchitectureEvaluator", "SearchObjective"),
        "exitnas.search.pareto": ("hypervolume_2d", "pareto_mask"),
        "exitnas.search.rules": ("RULES", "ExitOutcome", "ExitRule", "ExitTable"),
        "exitnas.search.runner": ("SearchInterrupted", "SearchSummary", "open_study", "run_search"),
        "exitnas.search.samplers": ("create_sampler",),
        "exitnas.search.space": ("suggest", "trial_config"),
        "exitnas.search.storage": ("StorageError", "default_storage_url", "open_storage"),
        "exitnas.search.store": ("CachedEvaluation", "EvaluationStore", "SqlStore"),
    },
)
