"""Multi-objective search over sub-networks and exit thresholds, with Pareto export."""

from exitnas.search.objective import ArchitectureEvaluator, SearchObjective
from exitnas.search.pareto import hypervolume_2d, pareto_mask
from exitnas.search.rules import RULES, ExitOutcome, ExitRule, ExitTable
from exitnas.search.runner import SearchSummary, open_study, run_search
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
