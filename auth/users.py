"""User records and password login with lockout; every function takes an explicit session."""

from dataclasses import dataclass
from datetime import timedelta

from sqlmodel import Session, select

from auth.passwords import dummy_hash, hash_password, verify_password
from persistence.models import ROLES, LoginAttempt, User, UserCreate
from persistence.types import utcnow


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


def create_user(*, session: Session, user_in: UserCreate) -> User:
    if get_user(session=session, username=user_in.username) is not None:
        raise UserError(f"user {user_in.username!r} already exists")
    user = User(
        username=user_in.username,
        roles=check_roles(user_in.roles),
        is_active=user_in.is_active,
        password_hash=hash_password(user_in.password),
    )
    session.add(user)
    session.commit()
    session.refresh(user)
    return user


def get_user(*, session: Session, username: str) -> User | None:
    return session.exec(select(User).where(User.username == username)).first()


def list_users(*, session: Session) -> list[User]:
    return list(session.exec(select(User).order_by(User.username)))


def set_active(*, session: Session, username: str, active: bool) -> User:
    user = get_user(session=session, username=username)
    if user is None:
        raise UserError(f"no user {username!r}")
    user.is_active = active
    session.add(user)
    session.commit()
    return user


def authenticate(
    *, session: Session, username: str, password: str, max_failures: int, lockout_seconds: int
) -> User | None:
    """The active user whose password matches, else None; LockedOut while a username is locked.

    Unknown users are checked against a dummy hash and counted like known ones, so neither the
    answer, its timing nor the lockout tells whether a username exists.
    """
    now = utcnow()
    attempt = session.get(LoginAttempt, username)
    if attempt and attempt.locked_until and attempt.locked_until > now:
        raise LockedOut(int((attempt.locked_until - now).total_seconds()) + 1)
    user = get_user(session=session, username=username)
    matches = verify_password(password, user.password_hash if user else dummy_hash())
    if matches and user is not None and user.is_active:
        if attempt is not None:
            session.delete(attempt)
        user.last_login_at = now
        session.add(user)
        session.commit()
        return user
    attempt = attempt or LoginAttempt(username=username)
    attempt.failures += 1
    attempt.updated_at = now
    if attempt.failures >= max_failures:
        attempt.locked_until = now + timedelta(seconds=lockout_seconds)
        attempt.failures = 0
    session.add(attempt)
    session.commit()
    return None
