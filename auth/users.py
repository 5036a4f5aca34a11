"""User records, token revocation, and password login with a lockout counted atomically in the
database; every function takes an explicit session."""

import itertools
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

from sqlalchemy import and_, case, delete, func, literal, or_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from auth.passwords import dummy_hash, hash_password, verify_password
from persistence.models import ROLES, LoginAttempt, User, UserCreate
from persistence.types import UTCDateTime, utcnow

# Stale login_attempts rows (a name nobody tried for a lockout window) are deleted every this many
# counted attempts per process, so random usernames cannot grow the table without bound.
PURGE_EVERY = 256
_counted = itertools.count(1)


# Here rather than with the HTTP layer's metrics (api/metrics.py): auth never imports api.
@lru_cache
def login_lockouts() -> Any:
    import prometheus_client as prom  # imported late: the worker sets PROMETHEUS_MULTIPROC_DIR

    return prom.Counter(
        "attrition_login_lockouts", "Usernames locked by a failed login (too many failures)"
    )


class UserError(ValueError):
    """A user operation that cannot be done (duplicate name, unknown user, bad role)."""


@dataclass(frozen=True)
class LockedOut(Exception):
    retry_after_seconds: int


def check_roles(roles: list[str]) -> list[str]:
    unknown = sorted(set(roles) - set(ROLES))
    if unknown or not roles:
        raise UserError(f"roles must be a non-empty subset of {', '.join(ROLES)}; got {roles}")
    return sorted(set(roles))


def database_now(*, session: Session) -> datetime:
    """The database's clock: the one the CLI's host and every server share (tokens' `iat` come
    from a server's clock, the cut-off from whichever host ran the command). SQLite is a local
    file, so its host's clock."""
    if session.get_bind().dialect.name == "postgresql":
        return session.exec(select(func.clock_timestamp())).one()
    return utcnow()


def create_user(*, session: Session, user_in: UserCreate) -> User:
    if get_user(session=session, username=user_in.username) is not None:
        raise UserError(f"user {user_in.username!r} already exists")
    now = database_now(session=session)
    user = User(
        username=user_in.username,
        roles=check_roles(user_in.roles),
        is_active=user_in.is_active,
        password_hash=hash_password(user_in.password),
        created_at=now,
        tokens_valid_after=now,
    )
    session.add(user)
    try:
        session.commit()
    except IntegrityError as exc:  # created concurrently by someone else
        session.rollback()
        raise UserError(f"user {user_in.username!r} already exists") from exc
    session.refresh(user)
    return user


def get_user(*, session: Session, username: str) -> User | None:
    return session.exec(select(User).where(User.username == username)).first()


def list_users(*, session: Session) -> list[User]:
    return list(session.exec(select(User).order_by(User.username)))


def existing_user(*, session: Session, username: str) -> User:
    user = get_user(session=session, username=username)
    if user is None:
        raise UserError(f"no user {username!r}")
    return user


def set_active(*, session: Session, username: str, active: bool) -> User:
    user = existing_user(session=session, username=username)
    user.is_active = active
    session.add(user)
    session.commit()
    return user


def revoke_tokens(*, session: Session, username: str) -> User:
    """End every token issued to the user so far (new logins work as before)."""
    user = existing_user(session=session, username=username)
    user.tokens_valid_after = database_now(session=session)
    session.add(user)
    session.commit()
    return user


def delete_user(*, session: Session, username: str) -> None:
    """Remove the user; their tokens die with them, even if the name is created again."""
    session.delete(existing_user(session=session, username=username))
    session.commit()


def _upsert(session: Session) -> Any:
    """INSERT ... ON CONFLICT for the session's database (both support it with RETURNING)."""
    name = session.get_bind().dialect.name
    if name == "postgresql":
        return postgresql.insert
    if name == "sqlite":
        return sqlite.insert
    raise NotImplementedError(f"login attempts on {name}")


def count_attempt(
    *,
    session: Session,
    username: str,
    max_failures: int,
    lockout_seconds: int,
    now: datetime | None = None,
) -> tuple[int, datetime | None]:
    """Count one login attempt for `username`, before its password is checked, in one statement:
    (its number since the last success, the end of the lock).

    Concurrent attempts on any worker get distinct numbers, so at most `max_failures` passwords
    are checked per lock. Reaching `max_failures` locks the name for `lockout_seconds`; a count
    whose last attempt or lock is older than that starts again at 1.
    """
    now = now or utcnow()
    table: Any = LoginAttempt.__table__  # type: ignore[attr-defined]
    c = table.c
    at = literal(now, UTCDateTime())
    until = literal(now + timedelta(seconds=lockout_seconds), UTCDateTime())
    window_start = literal(now - timedelta(seconds=lockout_seconds), UTCDateTime())
    stale = or_(
        and_(c.locked_until.is_not(None), c.locked_until <= at),
        and_(c.locked_until.is_(None), c.updated_at <= window_start),
    )
    failures = case((stale, 1), else_=c.failures + 1)
    locked_until = case(
        (c.locked_until > at, c.locked_until), (failures >= max_failures, until), else_=None
    )
    statement = (
        _upsert(session)(table)
        .values(
            username=username,
            failures=1,
            locked_until=until if max_failures <= 1 else None,
            updated_at=at,
        )
        .on_conflict_do_update(
            index_elements=[c.username],
            set_={"failures": failures, "locked_until": locked_until, "updated_at": at},
        )
        .returning(c.failures, c.locked_until)
    )
    number, locked = session.exec(statement).one()
    if next(_counted) % PURGE_EVERY == 0:
        purge_attempts(session=session, lockout_seconds=lockout_seconds, now=now)
    session.commit()
    return int(number), locked


def purge_attempts(*, session: Session, lockout_seconds: int, now: datetime | None = None) -> int:
    """Delete counts that have expired (no attempt within the window, no lock in force)."""
    now = now or utcnow()
    c: Any = LoginAttempt.__table__.c  # type: ignore[attr-defined]
    statement = delete(LoginAttempt).where(
        c.updated_at <= now - timedelta(seconds=lockout_seconds),
        or_(c.locked_until.is_(None), c.locked_until <= now),
    )
    return int(session.exec(statement).rowcount)


def locked_for(*, session: Session, username: str, now: datetime | None = None) -> int | None:
    """Seconds until the name's lock ends, or None when it is not locked (a read, no count)."""
    now = now or utcnow()
    attempt = session.get(LoginAttempt, username)
    if attempt is None or attempt.locked_until is None or attempt.locked_until <= now:
        return None
    return int((attempt.locked_until - now).total_seconds()) + 1


def authenticate(
    *, session: Session, username: str, password: str, max_failures: int, lockout_seconds: int
) -> User | None:
    """The active user whose password matches, else None; LockedOut while a username is locked.

    The attempt is counted before the password is checked, so a burst of concurrent guesses
    gets at most `max_failures` checks. Unknown users are checked against a dummy hash and
    counted like known ones, so neither the answer, its timing nor the lockout tells whether a
    username exists.
    """
    number, locked_until = count_attempt(
        session=session,
        username=username,
        max_failures=max_failures,
        lockout_seconds=lockout_seconds,
    )
    if number > max_failures:
        now = utcnow()
        left = (locked_until - now).total_seconds() if locked_until else lockout_seconds
        raise LockedOut(max(int(left), 0) + 1)
    user = get_user(session=session, username=username)
    if user is None:
        password_hash, active, user_id = dummy_hash(), False, None
    else:
        password_hash, active, user_id = user.password_hash, user.is_active, user.id
    session.rollback()  # no transaction stays open during the slow check
    if not (verify_password(password, password_hash) and active):
        if number == max_failures:  # the attempt that locks the name, and it failed
            login_lockouts().inc()
        return None
    session.exec(delete(LoginAttempt).where(LoginAttempt.username == username))  # type: ignore[arg-type]
    session.exec(update(User).where(User.id == user_id).values(last_login_at=utcnow()))  # type: ignore[arg-type]
    session.commit()
    return session.get(User, user_id)
