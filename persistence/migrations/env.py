"""Alembic environment: the SQLModel metadata, the URL from the caller or the settings."""

from alembic import context
from sqlmodel import SQLModel

import persistence.models  # noqa: F401  (registers the tables on the metadata)
from persistence.db import MIGRATION_LOCK, make_engine
from persistence.partitions import include_name

config = context.config
target_metadata = SQLModel.metadata


def url() -> str:
    configured = config.get_main_option("sqlalchemy.url")
    if configured:
        return configured
    from settings import get_settings

    return get_settings().sqlalchemy_url


def run_offline() -> None:
    context.configure(
        url=url(), target_metadata=target_metadata, literal_binds=True, include_name=include_name
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    engine = make_engine(url())
    try:
        with engine.connect() as conn:
            context.configure(
                connection=conn,
                target_metadata=target_metadata,
                render_as_batch=conn.dialect.name == "sqlite",
                compare_type=True,
                include_name=include_name,
            )
            with context.begin_transaction():
                if conn.dialect.name == "postgresql":
                    # Replicas, a migration Job and on-deployment hooks may start together: the
                    # first to take this lock migrates, the others wait, then find the head.
                    conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
