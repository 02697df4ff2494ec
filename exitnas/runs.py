"""A run folder opened once: its study, supernet, database, validation split and cache.

Every command after ``exitnas train`` works on a run folder (``--study RUN_DIR``). A
:class:`Run` opens it once and loads each part on first use, once: the supernet, the hash of its
weights, the validation split, the evaluation key (weights + split, the cache's second key),
the study database and the cached evaluator. A budget query therefore loads the supernet once
and hashes the weights once, however many parts it reads.

Example:
    >>> run = Run.open("runs/quickstart")
    >>> front = pareto_points(run.searched(), run.study.space)
    >>> table, _ = run.evaluator.table(front[0].config)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from exitnas.spaces import StudyConfig
from exitnas.storage.urls import resolve_storage_url
from exitnas.supernet.trained import checked_study

if TYPE_CHECKING:
    import optuna

    from exitnas.data import DataSplits
    from exitnas.devices.costs import DeviceCosts
    from exitnas.search.objective import ArchitectureEvaluator
    from exitnas.storage.store import SqlStore
    from exitnas.supernet import SuperViT

__all__ = ["Run"]


@dataclass
class Run:
    """One trained run folder, its parts loaded on first use and kept.

    Attributes:
        path: the run folder (written by ``exitnas train``).
        study: the study it was trained for (``data.path`` replaced by ``--data``).
        url: the SQLAlchemy URL of its searched study.
        progress: show a bar while images are decoded.
    """

    path: Path
    study: StudyConfig
    url: str
    progress: bool = True
    _searched: dict[str | None, optuna.Study] = field(default_factory=dict, init=False, repr=False)
    _costs: dict[str, DeviceCosts] = field(default_factory=dict, init=False, repr=False)

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        storage: str | None = None,
        data: str | os.PathLike[str] | None = None,
        *,
        progress: bool = True,
    ) -> Run:
        """Open a trained run folder (nothing heavy is loaded yet).

        Args:
            path: folder written by ``exitnas train``.
            storage: ``--storage``; else the study's ``search.storage``, else the run's SQLite
                file.
            data: ``--data``: where the study's data lives now.
            progress: a bar while images are decoded (a cold decoded-image cache).

        Raises:
            CheckpointError: no finished supernet in ``path``, or its description or weights
                file is corrupt or not its own.
        """
        path = Path(path)
        study = checked_study(path).with_data_path(data)
        return cls(path, study, resolve_storage_url(storage, study.search.storage, path), progress)

    @property
    def weights(self) -> Path:
        """The supernet's weights file."""
        from exitnas.supernet.train import WEIGHTS

        return self.path / WEIGHTS

    @cached_property
    def supernet(self) -> SuperViT:
        """The trained supernet, in eval mode on the CPU (loaded once)."""
        from exitnas.supernet import load_supernet

        return load_supernet(self.path, self.study)[0]

    @cached_property
    def weights_sha256(self) -> str:
        """sha256 of the weights file (hashed once): bundles and profiles record it."""
        from exitnas.supernet.checkpoint import file_sha256

        return file_sha256(self.weights)

    @cached_property
    def splits(self) -> DataSplits:
        """The study's data splits; search, queries and reports use only ``val``."""
        from exitnas.search.objective import load_validation

        return load_validation(self.study, self.progress)

    @cached_property
    def evaluation_key(self) -> str:
        """Hash of the weights and the validation split: the evaluation cache's second key."""
        from exitnas.search.objective import evaluation_key

        return evaluation_key(self.path, self.splits, self.weights_sha256)

    @cached_property
    def store(self) -> SqlStore:
        """exitnas's tables in the study database (evaluations, profiles, policies)."""
        from exitnas.storage.urls import open_store

        return open_store(self.url)

    @cached_property
    def evaluator(self) -> ArchitectureEvaluator:
        """Cached per-exit logits of any configuration on the validation split."""
        from exitnas.search.objective import evaluator_on

        return evaluator_on(self.supernet, self.splits, self.store, self.evaluation_key)

    def searched(self, device: str | None = None) -> optuna.Study:
        """The searched Optuna study, checked to be this supernet's and validation split's.

        Args:
            device: prefer the device search ``<study>@<device>`` when there is one (its front
                includes latency); fall back to the study's own search.
        """
        if device not in self._searched:
            from exitnas.search.studies import load_searched_study, search_study_name, study_names

            if device is not None and search_study_name(self.study, device) not in study_names(
                self.url
            ):
                self._searched[device] = self.searched()
            else:
                key = self.evaluation_key
                self._searched[device] = load_searched_study(self.study, self.url, key, device)
        return self._searched[device]

    def device_costs(self, device: str) -> DeviceCosts:
        """The stored profile of ``device`` as per-stage costs (loaded and fitted once).

        Raises:
            ProfileError: the device was never profiled for this study.
        """
        if device not in self._costs:
            from exitnas.devices.costs import load_device_costs

            self._costs[device] = load_device_costs(self.store, self.study, device, self.url)
        return self._costs[device]

    def forget_costs(self, device: str) -> None:
        """Drop the cached costs of ``device`` (its stored profile was replaced)."""
        self._costs.pop(device, None)

    def costs(self, device: str | None) -> DeviceCosts | None:
        """:meth:`device_costs`, or None without a device."""
        return None if device is None else self.device_costs(device)
