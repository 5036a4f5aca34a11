"""A migrated database on each backend, fresh for every test."""

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
