"""PostgreSQL in trouble, for one test's own database only (other tests share the server): a
role that connection limits apply to, its database's slots all taken, a lock on `users`."""

import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

from tests.harness import PG_ADMIN, temporary_database


def libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def admin(*statements: str) -> None:
    """Run statements as the server's superuser."""
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


@contextmanager
def role_database() -> Iterator[str]:
    """A fresh database owned by a login role of its own (a superuser ignores connection
    limits), as a SQLAlchemy URL that connects as that role; both dropped afterwards."""
    role = f"attrition_role_{uuid.uuid4().hex[:10]}"
    admin(f'CREATE ROLE "{role}" LOGIN')
    try:
        with temporary_database("attrition_trouble") as url:
            admin(f'ALTER DATABASE "{database_name(url)}" OWNER TO "{role}"')
            yield url.replace("//postgres@", f"//{role}@")
    finally:
        admin(f'DROP ROLE IF EXISTS "{role}"')


def database_name(url: str) -> str:
    return url.rsplit("/", 1)[1]


def set_database(url: str, setting: str) -> None:
    """ALTER DATABASE <url's database> <setting>, as the server's superuser."""
    admin(f'ALTER DATABASE "{database_name(url)}" {setting}')


@contextmanager
def slots_taken(url: str) -> Iterator[None]:
    """No new connection to the database of `url` (its role is no superuser) while the block
    runs, as when other clients hold every free slot: open connections keep working."""
    set_database(url, "CONNECTION LIMIT 0")
    try:
        yield
    finally:
        set_database(url, "CONNECTION LIMIT -1")


@contextmanager
def users_locked(url: str) -> Iterator[None]:
    """Another connection holds LOCK TABLE users IN ACCESS EXCLUSIVE MODE while the block runs."""
    with psycopg.connect(libpq(url)) as conn:
        conn.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        yield
        conn.rollback()


def deadlock(url: str) -> BaseException:
    """The error PostgreSQL gives the loser of a deadlock between two connections."""
    with psycopg.connect(libpq(url), autocommit=True) as setup:
        setup.execute("CREATE TABLE IF NOT EXISTS deadlock_probe (id int PRIMARY KEY)")
        setup.execute("INSERT INTO deadlock_probe VALUES (1), (2) ON CONFLICT DO NOTHING")
    barrier = threading.Barrier(2, timeout=30)
    errors: list[BaseException] = []

    def take(first: int, second: int) -> None:
        with psycopg.connect(libpq(url)) as conn:
            try:
                conn.execute("SELECT id FROM deadlock_probe WHERE id = %s FOR UPDATE", (first,))
                barrier.wait()
                conn.execute("SELECT id FROM deadlock_probe WHERE id = %s FOR UPDATE", (second,))
            except psycopg.Error as exc:
                errors.append(exc)

    threads = [threading.Thread(target=take, args=pair) for pair in ((1, 2), (2, 1))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    [error] = errors
    return error
