"""JWT minting and verification, strict per RFC 7519 / RFC 8725: one algorithm, required claims,
iss/aud, numeric times, a bounded subject without control characters."""

import math
import time
import uuid
from collections import OrderedDict
from collections.abc import Sequence
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


class ProviderUnavailable(TokenError):
    """The identity provider's keys are needed and cannot be had now: answered with 503."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = max(1, math.ceil(retry_after))  # seconds, for Retry-After


@dataclass(frozen=True)
class Claims:
    sub: str
    roles: tuple[str, ...]
    iat: float
    exp: float
    raw: dict[str, Any]
    # From the identity provider: sub is qualified by the issuer, roles come from its mapping,
    # and there is no local user behind it.
    provider: bool = False
    kid: str | None = None  # of the provider key that signed it


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


def checked_claims(
    token: str,
    key: Any,
    *,
    algorithms: Sequence[str],
    audience: str,
    issuer: str,
    leeway: float,
    strict_aud: bool,
) -> dict[str, Any]:
    """The verified claims of `token`, or TokenError naming what is wrong (never token content)."""
    try:
        raw: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=list(algorithms),
            audience=audience,
            issuer=issuer,
            leeway=leeway,
            options={"require": list(REQUIRED_CLAIMS), "strict_aud": strict_aud},
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
    return raw


def unverified_header(token: str) -> dict[str, Any]:
    try:
        return jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise TokenError("malformed token") from exc


def unverified_issuer(token: str) -> Any:
    """The `iss` a token claims, to choose who verifies it (None when unreadable)."""
    try:
        return jwt.decode(token, options={"verify_signature": False}).get("iss")
    except jwt.PyJWTError:
        return None


class VerifiedCache:
    """Tokens already verified in this worker: clients reuse a token for many calls, and
    verifying its signature once is enough. Only time can invalidate a verified token (and,
    for a provider's, the withdrawal of its key), so a hit re-checks expiry."""

    SIZE = 10_000

    def __init__(self, leeway: float) -> None:
        self.leeway = leeway
        self._verified: OrderedDict[str, Claims] = OrderedDict()

    def get(self, token: str) -> Claims | None:
        claims = self._verified.get(token)
        if claims is not None and time.time() > claims.exp + self.leeway:
            del self._verified[token]
            raise TokenError("token has expired")
        return claims

    def put(self, token: str, claims: Claims) -> Claims:
        self._verified[token] = claims
        if len(self._verified) > self.SIZE:
            self._verified.popitem(last=False)
        return claims

    def drop(self, token: str) -> None:
        self._verified.pop(token, None)


class Verifier:
    """Decodes bearer tokens for one settings object: the service's own (key read once) and,
    with ATTRITION_OIDC_ISSUER, the identity provider's; a token's `iss` says which applies."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.local = settings.local_tokens
        self.key = verification_key(settings) if self.local else None
        self.algorithms = [settings.jwt_algorithm]  # an allowlist of one; never the header's choice
        self.cache = VerifiedCache(settings.jwt_leeway_seconds)
        self.provider: Any = None
        if settings.oidc_issuer is not None:
            from auth.oidc import shared_verifier  # it builds on this module

            self.provider = shared_verifier(settings)

    async def verify(self, token: str) -> Claims:
        """The claims of a valid token from either issuer, or TokenError (ProviderUnavailable
        when the provider's keys are needed and cannot be fetched in time)."""
        if self.provider is None:
            return self.decode(token)
        issuer = unverified_issuer(token) if self.local else self.provider.issuer
        if issuer == self.provider.issuer:
            return await self.provider.verify(token)
        if issuer != self.settings.jwt_issuer:
            raise TokenError("wrong issuer")
        return self.decode(token)

    def decode(self, token: str) -> Claims:
        """The claims of a valid token of the service's own."""
        if not self.local:
            raise TokenError("wrong issuer")
        claims = self.cache.get(token)
        if claims is not None:
            return claims
        return self.cache.put(token, self._decode(token))

    def _decode(self, token: str) -> Claims:
        header = unverified_header(token)
        if header.get("alg") not in self.algorithms:
            raise TokenError("token algorithm is not accepted")
        raw = checked_claims(
            token,
            self.key,
            algorithms=self.algorithms,
            audience=self.settings.jwt_audience,
            issuer=self.settings.jwt_issuer,
            leeway=self.settings.jwt_leeway_seconds,
            strict_aud=True,
        )
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
