"""Fixtures of the auth tests: a migrated database on each backend (the persistence tests' own)."""

from tests.persistence.conftest import url

__all__ = ["url"]
