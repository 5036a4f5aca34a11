"""Fixtures of the auth tests: a migrated database on each backend (the persistence tests' own)."""

from tests.persistence.conftest import pg_url, url

__all__ = ["pg_url", "url"]
