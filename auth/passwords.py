"""Password hashing with Argon2id (pwdlib)."""

from functools import lru_cache

from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher


@lru_cache
def hasher() -> PasswordHash:
    return PasswordHash((Argon2Hasher(),))


def hash_password(password: str) -> str:
    return hasher().hash(password)


def verify_password(password: str, password_hash: str) -> bool:
    return hasher().verify(password, password_hash)


@lru_cache
def dummy_hash() -> str:
    """A real hash to verify against for unknown users, so they cost the same time."""
    return hash_password("dummy password that matches nothing")
