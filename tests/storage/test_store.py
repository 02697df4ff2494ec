"""exitnas's own tables: migrations survive an upgrade killed half-way."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from exitnas.storage.urls import open_store


def versions(url: str) -> list[int]:
    with sa.create_engine(url).begin() as conn:
        return [r[0] for r in conn.execute(sa.text("SELECT version FROM exitnas_schema"))]


def test_an_upgrade_killed_after_its_create_table_is_finished_next_time(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    open_store(url)
    assert versions(url) == [1, 2, 3]
    # SQLite commits DDL on its own: a process killed between migration 2's CREATE TABLE and
    # its version row leaves the table without the row
    with sa.create_engine(url).begin() as conn:
        conn.execute(sa.text("DELETE FROM exitnas_schema WHERE version >= 2"))
    open_store(url)
    assert versions(url) == [1, 2, 3]


def test_a_database_of_an_older_exitnas_is_upgraded(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    open_store(url)
    with sa.create_engine(url).begin() as conn:  # as exitnas left it before policies existed
        conn.execute(sa.text("DROP TABLE exitnas_policies"))
        conn.execute(sa.text("DELETE FROM exitnas_schema WHERE version = 3"))
    store = open_store(url)
    assert versions(url) == [1, 2, 3]
    assert store.get_policy("study", "learned") is None
