"""exitnas's own tables, beside Optuna's in the same database.

:class:`EvaluationStore` is the interface: it hands out frozen records, never ORM objects.
:class:`SqlStore` implements it with SQLAlchemy Core on any SQLAlchemy URL (SQLite by default,
PostgreSQL for several hosts). Its schema is versioned from the start: numbered migrations
run through alembic's ``Operations`` and the applied version is kept in ``exitnas_schema``.
"""

from __future__ import annotations

import abc
import io
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import sqlalchemy as sa
from alembic.migration import MigrationContext
from alembic.operations import Operations
from sqlalchemy.dialects import postgresql

__all__ = ["CachedEvaluation", "EvaluationStore", "SqlStore"]


@dataclass(frozen=True)
class CachedEvaluation:
    """The per-exit logits of one architecture on the validation split."""

    arch_key: str  # SubnetConfig.key()
    weights_hash: str  # sha256 of the supernet weights file
    config_json: str  # the SubnetConfig, for reading the cache on its own
    logits: np.ndarray  # (num_exits, num_samples, num_classes), float32
    seconds: float  # wall-clock time the validation pass took


class EvaluationStore(abc.ABC):
    """Cache of validation logits keyed by ``(arch_key, weights_hash)``.

    Lifecycle: open once per process; :meth:`get` before computing an architecture's logits,
    :meth:`put` after; concurrent writers of the same key are harmless (the first one wins).
    """

    @abc.abstractmethod
    def get(self, arch_key: str, weights_hash: str) -> CachedEvaluation | None: ...

    @abc.abstractmethod
    def put(self, evaluation: CachedEvaluation) -> None: ...

    @abc.abstractmethod
    def count(self, weights_hash: str) -> int:
        """Architectures cached for these weights."""


def _migration_1(op: Operations) -> None:
    op.create_table(
        "exitnas_evaluations",
        sa.Column("arch_key", sa.String(32), primary_key=True),
        sa.Column("weights_hash", sa.String(64), primary_key=True),
        sa.Column("config_json", sa.Text, nullable=False),
        sa.Column("logits", sa.LargeBinary, nullable=False),
        sa.Column("seconds", sa.Float, nullable=False),
    )


MIGRATIONS = (_migration_1,)  # append only; index + 1 is the schema version
POSTGRES_MIGRATION_LOCK = 0x65786974  # pg_advisory_xact_lock key ("exit") for upgrade()

_metadata = sa.MetaData()
_schema = sa.Table("exitnas_schema", _metadata, sa.Column("version", sa.Integer, nullable=False))
_evaluations = sa.Table(
    "exitnas_evaluations",
    _metadata,
    sa.Column("arch_key", sa.String(32), primary_key=True),
    sa.Column("weights_hash", sa.String(64), primary_key=True),
    sa.Column("config_json", sa.Text),
    sa.Column("logits", sa.LargeBinary),
    sa.Column("seconds", sa.Float),
)


class SqlStore(EvaluationStore):
    """:class:`EvaluationStore` on an SQLAlchemy URL (the study's own database)."""

    def __init__(self, url: str, engine_kwargs: dict | None = None):
        self.engine = sa.create_engine(url, **(engine_kwargs or {}))
        for attempt in range(5):
            try:
                self.upgrade()
                break
            except (sa.exc.OperationalError, sa.exc.IntegrityError):
                # SQLite: another process created the tables between our check and our
                # CREATE; the next attempt sees them
                if attempt == 4:
                    raise
                time.sleep(0.2 * (attempt + 1))

    def upgrade(self) -> None:
        """Apply the migrations this database has not seen (safe to call from every worker).

        On PostgreSQL, workers opening a fresh database together take turns: each holds an
        advisory lock until its migration transaction commits (PostgreSQL's DDL is
        transactional, so the next one sees the tables and the version).
        """
        with self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(POSTGRES_MIGRATION_LOCK)))
            _schema.create(conn, checkfirst=True)
            version = conn.execute(sa.select(sa.func.max(_schema.c.version))).scalar() or 0
            operations = Operations(MigrationContext.configure(conn))
            for number, migrate in enumerate(MIGRATIONS[version:], start=version + 1):
                migrate(operations)
                conn.execute(_schema.insert().values(version=number))

    @contextmanager
    def _transaction(self) -> Iterator[sa.Connection]:
        with self.engine.begin() as conn:
            yield conn

    def get(self, arch_key: str, weights_hash: str) -> CachedEvaluation | None:
        query = sa.select(_evaluations).where(
            _evaluations.c.arch_key == arch_key, _evaluations.c.weights_hash == weights_hash
        )
        with self._transaction() as conn:
            row = conn.execute(query).first()
        if row is None:
            return None
        return CachedEvaluation(
            arch_key, weights_hash, row.config_json, _unpack(row.logits), float(row.seconds)
        )

    def put(self, evaluation: CachedEvaluation) -> None:
        values = {
            "arch_key": evaluation.arch_key,
            "weights_hash": evaluation.weights_hash,
            "config_json": evaluation.config_json,
            "logits": _pack(evaluation.logits),
            "seconds": evaluation.seconds,
        }
        statement: sa.Insert
        if self.engine.dialect.name == "postgresql":  # no failed statement in the server log
            statement = postgresql.insert(_evaluations).values(**values).on_conflict_do_nothing()
        else:
            statement = _evaluations.insert().values(**values)
        try:
            with self._transaction() as conn:
                conn.execute(statement)
        except sa.exc.IntegrityError:
            pass  # another worker cached the same architecture first: same logits

    def count(self, weights_hash: str) -> int:
        query = sa.select(sa.func.count()).where(_evaluations.c.weights_hash == weights_hash)
        with self._transaction() as conn:
            return int(conn.execute(query).scalar() or 0)


def _pack(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array, dtype=np.float32), allow_pickle=False)
    return zlib.compress(buffer.getvalue(), level=1)


def _unpack(blob: bytes) -> np.ndarray:
    return np.load(io.BytesIO(zlib.decompress(blob)), allow_pickle=False)
