"""Engine factory and migrations: PostgreSQL through psycopg 3, or an embedded SQLite file."""

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# PostgreSQL advisory lock held while migrating (b"attritio" as a 64-bit integer): replicas, a
# migration Job and on-deployment hooks that start together migrate one after the other.
MIGRATION_LOCK = 0x617474726974696F

# libpq settings of every PostgreSQL connection this project opens (engines and the inference
# log's writer); a parameter in the database URL (?connect_timeout=10) overrides one.
# Without them a database that drops packets holds a connect for psycopg's 130 s and a query on
# an established connection until the kernel gives up (about 15 minutes of retransmissions).
CONNECTION_DEFAULTS: dict[str, Any] = {
    # A connect (TCP, TLS and the startup exchange) that takes longer fails; libpq's minimum is 2.
    "connect_timeout": 3,
    # An idle connection whose peer vanished is found after 10 + 3 x 5 s of unanswered probes,
    # so a pooled connection is not handed out dead (pool_pre_ping would wait on it).
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    # Data sent and not acknowledged for this long (milliseconds) ends the connection: a query or
    # COPY to a database that stopped answering mid-statement fails instead of waiting.
    "tcp_user_timeout": 10_000,
}


def connect_args(
    url: str,
    *,
    statement_timeout: float | None = None,
    lock_timeout: float | None = None,
    application_name: str | None = None,
) -> dict[str, Any]:
    """psycopg connect() keyword arguments for a connection to `url` (a SQLAlchemy URL or a
    libpq conninfo URL): CONNECTION_DEFAULTS and the given server-side timeouts (seconds), each
    unless the URL sets it."""
    given = dict(make_url(url.replace("postgresql://", "postgresql+psycopg://", 1)).query)
    args = {k: v for k, v in CONNECTION_DEFAULTS.items() if k not in given}
    if application_name and "application_name" not in given:
        args["application_name"] = application_name
    options = [
        f"-c {name}={round(seconds * 1000)}"
        for name, seconds in (
            ("statement_timeout", statement_timeout),
            ("lock_timeout", lock_timeout),
        )
        if seconds is not None
    ]
    if options:
        # The URL's own options come last: for a setting given twice, PostgreSQL keeps the last.
        args["options"] = " ".join([*options, str(given.get("options", ""))]).strip()
    return args


def make_engine(
    url: str,
    *,
    pool_size: int = 5,
    pool_timeout: float = 30.0,
    statement_timeout: float | None = None,
    lock_timeout: float | None = None,
    application_name: str = "attrition",
) -> Engine:
    """An engine for `url`; call once per worker process and dispose() at shutdown.

    Every PostgreSQL connection gets CONNECTION_DEFAULTS; `statement_timeout` and `lock_timeout`
    (seconds) are for engines that serve requests: a batch job's long statement is legitimate.
    """
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(conn, _record):  # type: ignore[no-untyped-def]
            # WAL lets readers and one writer work at once across worker processes.
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    return create_engine(
        url,
        pool_pre_ping=True,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_timeout=pool_timeout,
        connect_args=connect_args(
            url,
            statement_timeout=statement_timeout,
            lock_timeout=lock_timeout,
            application_name=application_name,
        ),
    )


def alembic_config(url: str):  # type: ignore[no-untyped-def]
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Apply pending migrations (idempotent)."""
    from alembic import command

    command.upgrade(alembic_config(url), revision)


def current_revision(url: str) -> str | None:
    from alembic.runtime.migration import MigrationContext

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()
