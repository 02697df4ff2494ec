"""Search spaces, sub-network configs and study files (frozen, validated dataclasses)."""

from exitnas.spaces.config import HEAD_TYPES, BranchConfig, ExitConfig, SubnetConfig
from exitnas.spaces.space import BackboneSpace, SearchSpace
from exitnas.spaces.study import (
    DataConfig,
    SearchConfig,
    StudyConfig,
    TrainingConfig,
    load_study,
)

__all__ = [
    "HEAD_TYPES",
    "BackboneSpace",
    "BranchConfig",
    "DataConfig",
    "ExitConfig",
    "SearchConfig",
    "SearchSpace",
    "StudyConfig",
    "SubnetConfig",
    "TrainingConfig",
    "load_study",
]
