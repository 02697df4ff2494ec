"""exitnas's own tables, beside Optuna's in the same database.

:class:`EvaluationStore` is the interface: it hands out frozen records, never ORM objects.
:class:`SqlStore` implements it with SQLAlchemy Core on any SQLAlchemy URL (SQLite by default,
PostgreSQL for several hosts). Its schema is versioned from the start: the numbered
migrations of :mod:`~exitnas.storage.schema` run through alembic's ``Operations`` and the
applied version is kept in ``exitnas_schema``.
:class:`ProfileStore` is the second interface, for the per-stage device profiles of a study
(:class:`~exitnas.devices.profile.DeviceProfile`), :class:`PolicyStore` the third, for fitted
exit policies (skops bytes, see :mod:`exitnas.exits.policy`); :class:`SqlStore`
implements all three.
"""

from __future__ import annotations

import abc
import io
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from exitnas.errors import ExitnasError
from exitnas.faults import kill_point
from exitnas.storage.schema import (
    MIGRATIONS,
    NAME_LENGTH,
    evaluations_table,
    migrate,
    policies_table,
    profiles_table,
)

if TYPE_CHECKING:  # exitnas.devices.profile imports torch: import it where it is used
    from exitnas.devices.profile import DeviceProfile

# MIGRATIONS (from exitnas.storage.schema) is looked up here at each upgrade: replacing
# store.MIGRATIONS with its first migrations builds an old database.
__all__ = [
    "MIGRATIONS",
    "CachedEvaluation",
    "EvaluationStore",
    "PolicyStore",
    "ProfileExistsError",
    "ProfileStore",
    "SqlStore",
    "StoredPolicy",
]


class ProfileExistsError(ExitnasError):
    """A device is already profiled for a study and replacing it was not asked for."""


@dataclass(frozen=True)
class CachedEvaluation:
    """The per-exit logits of one architecture on the validation split."""

    arch_key: str  # SubnetConfig.key()
    weights_hash: str  # sha256 of the supernet weights file
    config_json: str  # the SubnetConfig, for reading the cache on its own
    logits: np.ndarray  # (num_exits, num_samples, num_classes), float32
    seconds: float  # wall-clock time the validation pass took


@dataclass(frozen=True)
class StoredPolicy:
    """A fitted exit policy of a study, as stored."""

    study_name: str
    name: str  # e.g. "learned"
    evaluation_key: str  # the cached logits it was fitted on (supernet weights + split)
    created: str  # ISO 8601 UTC
    info_json: str  # what was fitted on what (estimator, target, architectures, scores)
    blob: bytes  # skops bytes of the StudyPolicy


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


class ProfileStore(abc.ABC):
    """Per-stage latency profiles of a study's sub-networks, one per ``(study, device)``.

    Lifecycle: open once per process; :meth:`put_profile` after measuring (or importing) a
    device, :meth:`get_profile` / :meth:`list_devices` when fitting latency models. A stored
    profile is replaced only when asked for.
    """

    @abc.abstractmethod
    def put_profile(
        self, study_name: str, profile: DeviceProfile, *, replace: bool = False
    ) -> None:
        """Store ``profile`` under ``(study_name, profile.device)``.

        Raises:
            ProfileExistsError: that device is profiled for the study and ``replace`` is False.
        """

    @abc.abstractmethod
    def get_profile(self, study_name: str, device: str) -> DeviceProfile | None:
        """The stored profile of ``device``, or None."""

    @abc.abstractmethod
    def list_devices(self, study_name: str) -> list[str]:
        """Devices profiled for the study, sorted by name."""


class PolicyStore(abc.ABC):
    """Fitted exit policies of a study, one per ``(study, name)``; replaced only when asked."""

    @abc.abstractmethod
    def put_policy(self, policy: StoredPolicy, *, replace: bool = False) -> None:
        """Store ``policy``.

        Raises:
            ProfileExistsError: a policy of that name exists and ``replace`` is False.
        """

    @abc.abstractmethod
    def get_policy(self, study_name: str, name: str) -> StoredPolicy | None:
        """The stored policy, or None."""


def check_names(study_name: str, name: str, what: str = "device") -> None:
    """Refuse names the profiles and policies tables cannot hold (before any work starts).

    Args:
        what: ``"device"`` or ``"policy"``: the option the name came from (``--device``,
            ``--name``).
    """
    option = "--device" if what == "device" else "--name"
    if not name or len(name) > NAME_LENGTH:
        raise ExitnasError(f"{option}: a {what} name needs 1 to {NAME_LENGTH} characters")
    if len(study_name) > NAME_LENGTH:
        raise ExitnasError(f"study name: at most {NAME_LENGTH} characters for {what} records")


POSTGRES_MIGRATION_LOCK = 0x65786974  # pg_advisory_xact_lock key ("exit") for upgrade()


@contextmanager
def _sqlite_write_lock(conn: sa.Connection) -> Iterator[None]:
    """One SQLite transaction that holds the write lock from its start (``BEGIN IMMEDIATE``).

    Python's sqlite3 begins a transaction lazily, at the first write: a process that read the
    schema and then writes fails at once with "database is locked" when another wrote in
    between (SQLite does not wait there, to avoid a deadlock). Taking the lock first makes a
    second process wait for the first's migration (the busy timeout), then see its tables.
    """
    raw = conn.connection.dbapi_connection
    assert raw is not None
    level = raw.isolation_level
    raw.isolation_level = None  # no implicit BEGIN
    raw.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        raw.execute("ROLLBACK")
        raise
    else:
        raw.execute("COMMIT")
    finally:
        raw.isolation_level = level


class SqlStore(EvaluationStore, ProfileStore, PolicyStore):
    """:class:`EvaluationStore`, :class:`ProfileStore` and :class:`PolicyStore` on an
    SQLAlchemy URL (the study's own database)."""

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
        if self.engine.dialect.name == "sqlite":
            with self.engine.connect() as conn, _sqlite_write_lock(conn):
                migrate(conn, MIGRATIONS)
            return
        with self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(POSTGRES_MIGRATION_LOCK)))
            migrate(conn, MIGRATIONS)

    @contextmanager
    def _transaction(self) -> Iterator[sa.Connection]:
        with self.engine.begin() as conn:
            yield conn

    def get(self, arch_key: str, weights_hash: str) -> CachedEvaluation | None:
        query = sa.select(evaluations_table).where(
            evaluations_table.c.arch_key == arch_key,
            evaluations_table.c.weights_hash == weights_hash,
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
            statement = (
                postgresql.insert(evaluations_table).values(**values).on_conflict_do_nothing()
            )
        else:
            statement = evaluations_table.insert().values(**values)
        try:
            with self._transaction() as conn:
                conn.execute(statement)
        except sa.exc.IntegrityError:
            pass  # another worker cached the same architecture first: same logits

    def count(self, weights_hash: str) -> int:
        query = sa.select(sa.func.count()).where(evaluations_table.c.weights_hash == weights_hash)
        with self._transaction() as conn:
            return int(conn.execute(query).scalar() or 0)

    def put_profile(
        self, study_name: str, profile: DeviceProfile, *, replace: bool = False
    ) -> None:
        check_names(study_name, profile.device)
        key = (profiles_table.c.study_name == study_name, profiles_table.c.device == profile.device)
        values = {
            "study_name": study_name,
            "device": profile.device,
            "study_key": profile.study_key,
            "weights_hash": profile.weights_hash,
            "created": profile.created,
            "profile": profile.to_json(),
        }
        exists = ProfileExistsError(
            f"device {profile.device!r} is already profiled for study {study_name!r}; "
            "pass --replace (replace=True) to replace its profile"
        )
        try:
            with self._transaction() as conn:
                if conn.execute(sa.select(sa.func.count()).where(*key)).scalar():
                    if not replace:
                        raise exists
                    conn.execute(profiles_table.delete().where(*key))
                conn.execute(profiles_table.insert().values(**values))
                kill_point("profile-write")  # a kill here rolls back: the old profile stays
        except sa.exc.IntegrityError:
            raise exists from None  # another process stored the same device in between

    def get_profile(self, study_name: str, device: str) -> DeviceProfile | None:
        from exitnas.devices.profile import DeviceProfile

        query = sa.select(profiles_table.c.profile).where(
            profiles_table.c.study_name == study_name, profiles_table.c.device == device
        )
        with self._transaction() as conn:
            text = conn.execute(query).scalar()
        if text is None:
            return None
        return DeviceProfile.from_json(text, where=f"stored profile of device {device!r}")

    def list_devices(self, study_name: str) -> list[str]:
        query = (
            sa.select(profiles_table.c.device)
            .where(profiles_table.c.study_name == study_name)
            .order_by(profiles_table.c.device)
        )
        with self._transaction() as conn:
            return [str(d) for d in conn.execute(query).scalars()]

    def put_policy(self, policy: StoredPolicy, *, replace: bool = False) -> None:
        check_names(policy.study_name, policy.name, "policy")
        key = (
            policies_table.c.study_name == policy.study_name,
            policies_table.c.name == policy.name,
        )
        values = {
            "study_name": policy.study_name,
            "name": policy.name,
            "evaluation_key": policy.evaluation_key,
            "created": policy.created,
            "info": policy.info_json,
            "policy": policy.blob,
        }
        exists = ProfileExistsError(
            f"study {policy.study_name!r} already has a policy named {policy.name!r}; "
            "pass --replace (replace=True) to fit it again"
        )
        try:
            with self._transaction() as conn:
                if conn.execute(sa.select(sa.func.count()).where(*key)).scalar():
                    if not replace:
                        raise exists
                    conn.execute(policies_table.delete().where(*key))
                conn.execute(policies_table.insert().values(**values))
                kill_point("policy-write")  # a kill here rolls back: the old policy stays
        except sa.exc.IntegrityError:
            raise exists from None

    def get_policy(self, study_name: str, name: str) -> StoredPolicy | None:
        query = sa.select(policies_table).where(
            policies_table.c.study_name == study_name, policies_table.c.name == name
        )
        with self._transaction() as conn:
            row = conn.execute(query).first()
        if row is None:
            return None
        return StoredPolicy(
            study_name, name, row.evaluation_key, row.created, row.info, bytes(row.policy)
        )


def _pack(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array, dtype=np.float32), allow_pickle=False)
    return zlib.compress(buffer.getvalue(), level=1)


def _unpack(blob: bytes) -> np.ndarray:
    return np.load(io.BytesIO(zlib.decompress(blob)), allow_pickle=False)
