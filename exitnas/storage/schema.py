"""exitnas's tables in the study database: their definitions and the migrations creating them.

The schema is versioned from the start: :data:`MIGRATIONS` are numbered (index + 1 is the
schema version), run through alembic's ``Operations``, and :func:`migrate` records each one
applied in ``exitnas_schema``. The ``*_table`` definitions are what the store's queries use;
they describe the tables the migrations leave behind.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import sqlalchemy as sa
from alembic.migration import MigrationContext
from alembic.operations import Operations

__all__ = [
    "MIGRATIONS",
    "NAME_LENGTH",
    "evaluations_table",
    "migrate",
    "policies_table",
    "profiles_table",
]

NAME_LENGTH = 200  # longest study or device name the profiles table holds


def _create_table(op: Operations, name: str, *columns: sa.Column) -> None:
    """Create ``name`` unless it exists: SQLite commits DDL on its own, so an upgrade killed
    between a CREATE and its version row leaves the table behind; rerunning must not fail."""
    if not sa.inspect(op.get_bind()).has_table(name):
        op.create_table(name, *columns)


def _migration_1(op: Operations) -> None:
    _create_table(
        op,
        "exitnas_evaluations",
        sa.Column("arch_key", sa.String(32), primary_key=True),
        sa.Column("weights_hash", sa.String(64), primary_key=True),
        sa.Column("config_json", sa.Text, nullable=False),
        sa.Column("logits", sa.LargeBinary, nullable=False),
        sa.Column("seconds", sa.Float, nullable=False),
    )


def _migration_2(op: Operations) -> None:
    _create_table(
        op,
        "exitnas_device_profiles",
        sa.Column("study_name", sa.String(NAME_LENGTH), primary_key=True),
        sa.Column("device", sa.String(NAME_LENGTH), primary_key=True),
        sa.Column("study_key", sa.String(32), nullable=False),
        sa.Column("weights_hash", sa.String(64), nullable=False),
        sa.Column("created", sa.String(40), nullable=False),  # ISO 8601 UTC
        sa.Column("profile", sa.Text, nullable=False),  # DeviceProfile.to_json()
    )


def _migration_3(op: Operations) -> None:
    _create_table(
        op,
        "exitnas_policies",
        sa.Column("study_name", sa.String(NAME_LENGTH), primary_key=True),
        sa.Column("name", sa.String(NAME_LENGTH), primary_key=True),
        sa.Column("evaluation_key", sa.String(64), nullable=False),
        sa.Column("created", sa.String(40), nullable=False),  # ISO 8601 UTC
        sa.Column("info", sa.Text, nullable=False),  # JSON
        sa.Column("policy", sa.LargeBinary, nullable=False),  # skops bytes
    )


# append only; index + 1 is the schema version
MIGRATIONS = (_migration_1, _migration_2, _migration_3)

_metadata = sa.MetaData()
_schema = sa.Table("exitnas_schema", _metadata, sa.Column("version", sa.Integer, nullable=False))
evaluations_table = sa.Table(
    "exitnas_evaluations",
    _metadata,
    sa.Column("arch_key", sa.String(32), primary_key=True),
    sa.Column("weights_hash", sa.String(64), primary_key=True),
    sa.Column("config_json", sa.Text),
    sa.Column("logits", sa.LargeBinary),
    sa.Column("seconds", sa.Float),
)
profiles_table = sa.Table(
    "exitnas_device_profiles",
    _metadata,
    sa.Column("study_name", sa.String(NAME_LENGTH), primary_key=True),
    sa.Column("device", sa.String(NAME_LENGTH), primary_key=True),
    sa.Column("study_key", sa.String(32)),
    sa.Column("weights_hash", sa.String(64)),
    sa.Column("created", sa.String(40)),
    sa.Column("profile", sa.Text),
)
policies_table = sa.Table(
    "exitnas_policies",
    _metadata,
    sa.Column("study_name", sa.String(NAME_LENGTH), primary_key=True),
    sa.Column("name", sa.String(NAME_LENGTH), primary_key=True),
    sa.Column("evaluation_key", sa.String(64)),
    sa.Column("created", sa.String(40)),
    sa.Column("info", sa.Text),
    sa.Column("policy", sa.LargeBinary),
)


def migrate(conn: sa.Connection, migrations: Sequence[Callable[[Operations], None]]) -> None:
    """Create exitnas's tables and apply the migrations the database has not seen.

    Args:
        conn: a connection inside the upgrade's transaction.
        migrations: the numbered migrations, normally :data:`MIGRATIONS`.
    """
    _schema.create(conn, checkfirst=True)
    version = conn.execute(sa.select(sa.func.max(_schema.c.version))).scalar() or 0
    operations = Operations(MigrationContext.configure(conn))
    for number, step in enumerate(migrations[version:], start=version + 1):
        step(operations)
        conn.execute(_schema.insert().values(version=number))
