"""Migrations build the schema on SQLite and PostgreSQL and match the SQLModel tables."""

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect
from sqlmodel import Session, SQLModel

from auth.users import LockedOut, authenticate, create_user, set_active
from persistence import partitions
from persistence.db import current_revision, make_engine, upgrade
from persistence.models import UserCreate


def test_upgrade_is_idempotent_and_at_head(url: str) -> None:
    first = current_revision(url)
    upgrade(url)
    assert first is not None and current_revision(url) == first


def test_migrations_match_the_models(url: str) -> None:
    if url.startswith("postgresql"):  # partitions are made at run time: not schema drift
        with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as pg:
            partitions.ensure(pg, partitions.upcoming())
    engine = make_engine(url)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"include_name": partitions.include_name})
        diff = compare_metadata(context, SQLModel.metadata)
        tables = set(inspect(conn).get_table_names())
    engine.dispose()
    assert diff == [], diff
    assert {"users", "login_attempts", "inferences", "log_erasures"} <= tables


def test_lockout_and_disabled_users(url: str) -> None:
    engine = make_engine(url)
    kwargs = {"max_failures": 2, "lockout_seconds": 60}
    with Session(engine) as session:
        user = create_user(
            session=session,
            user_in=UserCreate(username="kim", roles=["predict"], password="pa55word!"),
        )
        assert user.created_at.tzinfo is not None
        assert authenticate(session=session, username="kim", password="pa55word!", **kwargs)
        assert authenticate(session=session, username="kim", password="nope", **kwargs) is None
        assert authenticate(session=session, username="kim", password="nope", **kwargs) is None
        with pytest.raises(LockedOut):
            authenticate(session=session, username="kim", password="pa55word!", **kwargs)
        create_user(
            session=session,
            user_in=UserCreate(username="lee", roles=["history"], password="pa55word!"),
        )
        set_active(session=session, username="lee", active=False)
        assert authenticate(session=session, username="lee", password="pa55word!", **kwargs) is None
    engine.dispose()
