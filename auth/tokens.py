"""JWT minting and verification, strict per RFC 8725: one algorithm, required claims, iss/aud."""

import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt

from settings import Settings

REQUIRED_CLAIMS = ("sub", "exp", "iat", "iss", "aud")


class TokenError(Exception):
    """A token that must be answered with 401; the message is safe to show."""


@dataclass(frozen=True)
class Claims:
    sub: str
    roles: tuple[str, ...]
    raw: dict[str, Any]


def signing_key(settings: Settings) -> Any:
    if settings.jwt_algorithm == "HS256":
        assert settings.jwt_secret is not None  # settings guarantee it
        return settings.jwt_secret.get_secret_value()
    if settings.jwt_private_key_file is None:
        raise TokenError("minting RS256/ES256 tokens needs ATTRITION_JWT_PRIVATE_KEY_FILE")
    return settings.jwt_private_key_file.read_text()


def verification_key(settings: Settings) -> Any:
    if settings.jwt_algorithm == "HS256":
        assert settings.jwt_secret is not None
        return settings.jwt_secret.get_secret_value()
    assert settings.jwt_public_key_file is not None
    return settings.jwt_public_key_file.read_text()


def create_token(
    settings: Settings, *, subject: str, roles: list[str], ttl_seconds: int | None = None
) -> str:
    now = datetime.now(UTC)
    ttl = ttl_seconds or settings.access_token_ttl_seconds
    claims = {
        "sub": subject,
        "roles": list(roles),
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "iat": now,
        "nbf": now,
        "exp": now + timedelta(seconds=ttl),
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(claims, signing_key(settings), algorithm=settings.jwt_algorithm)


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
            if time.time() > claims.raw["exp"] + self.settings.jwt_leeway_seconds:
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
            raise TokenError(f"algorithm {header.get('alg')!r} is not accepted")
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
            raise TokenError(f"missing claim {exc.claim!r}") from exc
        except jwt.InvalidSignatureError as exc:
            raise TokenError("bad signature") from exc
        except jwt.PyJWTError as exc:
            raise TokenError("invalid token") from exc
        sub, roles = raw.get("sub"), raw.get("roles", [])
        if not isinstance(sub, str) or not sub:
            raise TokenError("claim 'sub' must be a non-empty string")
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise TokenError("claim 'roles' must be a list of strings")
        return Claims(sub=sub, roles=tuple(roles), raw=raw)
