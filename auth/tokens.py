"""JWT minting and verification, strict per RFC 7519 / RFC 8725: one algorithm, required claims,
iss/aud, numeric times, a bounded subject without control characters."""

import math
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import jwt

from persistence.types import UNSTORABLE_TEXT
from settings import Settings

REQUIRED_CLAIMS = ("sub", "exp", "iat", "iss", "aud")
TIME_CLAIMS = ("exp", "iat", "nbf")
MAX_SUBJECT_CHARS = 255  # the inference log's subject column


class TokenError(Exception):
    """A token that must be answered with 401. The message is a fixed text, never token content."""


@dataclass(frozen=True)
class Claims:
    sub: str
    roles: tuple[str, ...]
    iat: float
    exp: float
    raw: dict[str, Any]


def signing_key(settings: Settings) -> Any:
    if settings.jwt_algorithm == "HS256":
        if settings.jwt_secret is None:
            raise TokenError("minting HS256 tokens needs ATTRITION_JWT_SECRET")
        return settings.jwt_secret.get_secret_value()
    if settings.jwt_private_key_file is None:
        raise TokenError("minting RS256/ES256 tokens needs ATTRITION_JWT_PRIVATE_KEY_FILE")
    return settings.jwt_private_key_file.read_text()


def verification_key(settings: Settings) -> Any:
    if settings.jwt_algorithm == "HS256":
        assert settings.jwt_secret is not None  # secured() settings guarantee it
        return settings.jwt_secret.get_secret_value()
    assert settings.jwt_public_key_file is not None
    return settings.jwt_public_key_file.read_text()


def create_token(
    settings: Settings, *, subject: str, roles: list[str], ttl_seconds: int | None = None
) -> str:
    # Fractional seconds in iat: a token is valid only if issued after its user's
    # tokens_valid_after (creation or the last revocation), which whole seconds cannot order.
    now = time.time()
    ttl = ttl_seconds or settings.access_token_ttl_seconds
    claims = {
        "sub": subject,
        "roles": list(roles),
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "iat": now,
        "nbf": now,
        "exp": now + ttl,
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(claims, signing_key(settings), algorithm=settings.jwt_algorithm)


def number(value: Any) -> bool:
    """A JSON number: not a numeric string, not a boolean, finite."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check_subject(sub: Any) -> str:
    if not isinstance(sub, str) or not sub:
        raise TokenError("claim 'sub' must be a non-empty string")
    if len(sub) > MAX_SUBJECT_CHARS:
        raise TokenError("claim 'sub' is too long")
    if UNSTORABLE_TEXT.search(sub):
        raise TokenError("claim 'sub' contains control characters or surrogates")
    return sub


class Verifier:
    """Decodes bearer tokens for one settings object; the key is read once."""

    CACHE_SIZE = 10_000

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.key = verification_key(settings)
        self.algorithms = [settings.jwt_algorithm]  # an allowlist of one; never the header's choice
        # Clients reuse a token for many calls; verifying its signature once per worker is enough.
        # Only time can invalidate a verified token, so a hit re-checks expiry.
        self._verified: OrderedDict[str, Claims] = OrderedDict()

    def decode(self, token: str) -> Claims:
        claims = self._verified.get(token)
        if claims is not None:
            if time.time() > claims.exp + self.settings.jwt_leeway_seconds:
                del self._verified[token]
                raise TokenError("token has expired")
            return claims
        claims = self._decode(token)
        self._verified[token] = claims
        if len(self._verified) > self.CACHE_SIZE:
            self._verified.popitem(last=False)
        return claims

    def _decode(self, token: str) -> Claims:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise TokenError("malformed token") from exc
        if header.get("alg") not in self.algorithms:
            raise TokenError("token algorithm is not accepted")
        try:
            raw = jwt.decode(
                token,
                self.key,
                algorithms=self.algorithms,
                audience=self.settings.jwt_audience,
                issuer=self.settings.jwt_issuer,
                leeway=self.settings.jwt_leeway_seconds,
                options={"require": list(REQUIRED_CLAIMS), "strict_aud": True},
            )
        except jwt.ExpiredSignatureError as exc:
            raise TokenError("token has expired") from exc
        except jwt.ImmatureSignatureError as exc:
            raise TokenError("token is not valid yet") from exc
        except jwt.InvalidAudienceError as exc:
            raise TokenError("wrong audience") from exc
        except jwt.InvalidIssuerError as exc:
            raise TokenError("wrong issuer") from exc
        except jwt.MissingRequiredClaimError as exc:
            claim = exc.claim if exc.claim in REQUIRED_CLAIMS else "required"
            raise TokenError(f"missing claim {claim!r}") from exc
        except jwt.exceptions.InvalidSubjectError as exc:
            raise TokenError("claim 'sub' must be a non-empty string") from exc
        except jwt.InvalidSignatureError as exc:
            raise TokenError("bad signature") from exc
        except jwt.PyJWTError as exc:
            raise TokenError("invalid token") from exc
        # PyJWT takes int() of the time claims, so "9999999999" and true pass its checks; later
        # arithmetic on them (the cache's expiry check) would not.
        for name in TIME_CLAIMS:
            if name in raw and not number(raw[name]):
                raise TokenError(f"claim {name!r} must be a number of seconds")
        roles = raw.get("roles", [])
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise TokenError("claim 'roles' must be a list of strings")
        return Claims(
            sub=check_subject(raw.get("sub")),
            roles=tuple(roles),
            iat=float(raw["iat"]),
            exp=float(raw["exp"]),
            raw=raw,
        )
