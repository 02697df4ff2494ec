"""The study database: Optuna's storage URLs, and exitnas's own tables beside Optuna's.

:mod:`~exitnas.storage.urls` resolves and opens storage URLs (SQLite by default, any
SQLAlchemy URL); :mod:`~exitnas.storage.store` keeps the cached evaluations, device profiles
and fitted policies in tables of the same database, migrated with Alembic, and hands out plain
records. Names are imported on first use (:mod:`exitnas._lazy`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from exitnas._lazy import lazy_exports

if TYPE_CHECKING:
    from exitnas.storage.store import CachedEvaluation, EvaluationStore, SqlStore
    from exitnas.storage.urls import (
        StorageError,
        default_storage_url,
        open_storage,
        open_store,
        resolve_storage_url,
    )

__all__ = [
    "CachedEvaluation",
    "EvaluationStore",
    "SqlStore",
    "StorageError",
    "default_storage_url",
    "open_storage",
    "open_store",
    "resolve_storage_url",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "exitnas.storage.store": ("CachedEvaluation", "EvaluationStore", "SqlStore"),
        "exitnas.storage.urls": (
            "StorageError",
            "default_storage_url",
            "open_storage",
            "open_store",
            "resolve_storage_url",
        ),
    },
)
