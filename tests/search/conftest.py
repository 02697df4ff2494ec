"""Fixtures of the search tests: a fresh PostgreSQL database (CI's server, .ci/postgres.sh)."""

from __future__ import annotations

import os
import uuid

import pytest
import sqlalchemy as sa


@pytest.fixture
def fresh_url():
    """A URL of the server in EXITNAS_TEST_POSTGRES_URL whose tables all go to a new, empty
    schema (dropped after): a fresh database. Skips the test when the variable is not set."""
    server = os.environ.get("EXITNAS_TEST_POSTGRES_URL", "")
    if not server:
        pytest.skip("EXITNAS_TEST_POSTGRES_URL is not set")
    schema = f"exitnas_test_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(server)
    with engine.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    url = sa.engine.make_url(server).update_query_dict({"options": f"-csearch_path={schema}"})
    yield url.render_as_string(hide_password=False)
    with engine.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    engine.dispose()
