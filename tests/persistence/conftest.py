"""A migrated database on each backend, fresh for every test."""

from datetime import datetime
from pathlib import Path

import pytest

from persistence.db import upgrade
from tests.conftest import PostgresDatabases, database_url


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, postgres: PostgresDatabases, tmp_path: Path) -> str:
    url = database_url(request.param, postgres, tmp_path)
    upgrade(url)
    return url


@pytest.fixture
def pg_url(postgres: PostgresDatabases) -> str:
    """A migrated PostgreSQL database, for what only PostgreSQL does."""
    url = postgres.create()
    upgrade(url)
    return url


def partitions_for(url: str, *moments: datetime) -> None:
    """On PostgreSQL, the monthly partitions these moments fall in (the log's writers make
    them for the rows they write; tests that add rows through the ORM make them here)."""
    if not url.startswith("postgresql"):
        return
    import psycopg

    from persistence import partitions

    with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as pg:
        partitions.ensure(pg, {partitions.month_of(m) for m in moments})
