"""Pure ASGI middleware: verify the bearer token, check the user and the route's role."""

import json
import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from auth.directory import LookupFailed, Unreachable, UserState, directory
from auth.tokens import ProviderUnavailable, TokenError, Verifier
from settings import Settings

log = logging.getLogger("attrition.auth")

# (path prefix, method or None for any) -> roles that may call it; admin may call everything.
ROUTE_ROLES: tuple[tuple[str, str | None, frozenset[str]], ...] = (
    ("/predict/history", "GET", frozenset({"history"})),
    ("/predict/", "POST", frozenset({"predict"})),
    ("/outcomes", "POST", frozenset({"outcomes"})),
    ("/monitoring/", None, frozenset()),
    ("/admin/", None, frozenset()),
)
# Swagger UI assets; always public along with settings.public_paths.
PUBLIC_PREFIXES = ("/static_content/", "/assets/")
ADMIN = "admin"
# What a token may still do while its user cannot be read: the routes that need no database.
FALLBACK_ROLES = frozenset({"predict"})
# The public OpenAPI document's info: the API, not the libraries behind it.
OPENAPI_VERSION = "1"
OPENAPI_DESCRIPTION = (
    "Employee-attrition risk: score employees, read the prediction history. Get a token from "
    "POST /auth/token, then send it as 'Authorization: Bearer <token>'."
)
# Characters allowed in a WWW-Authenticate error_description (RFC 6750 3: no quote, no backslash).
CHALLENGE_UNSAFE = re.compile(r"[^A-Za-z0-9 .,:;'<>()_-]")
# Seconds a client told the user directory cannot be read should wait before trying again.
RETRY_AFTER = b"2"


def required_roles(method: str, path: str) -> frozenset[str] | None:
    """Roles that grant this route (admin always does); None = any authenticated user."""
    for prefix, verb, roles in ROUTE_ROLES:
        if path.startswith(prefix) and verb in (None, method):
            return roles | {ADMIN}
    return None


@dataclass(frozen=True)
class Principal:
    """Who is calling: put on request.state.principal for the service's handlers."""

    subject: str
    roles: frozenset[str]

    @property
    def is_admin(self) -> bool:
        return ADMIN in self.roles


def error_body(error: str, loc: list[str], msg: str, type_: str) -> bytes:
    """The error shape BentoML uses for validation errors, {"error", "detail": [{loc, msg, type}]},
    for every refusal of the project's ASGI middlewares."""
    detail = [{"loc": loc, "msg": msg, "type": type_}]
    return json.dumps({"error": error, "detail": detail}).encode()


async def send_json(send: Any, status: int, body: bytes, headers: Any = ()) -> None:
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": [*head, *headers]})
    await send({"type": "http.response.body", "body": body})


@dataclass(frozen=True)
class Refusal:
    status: int
    body: bytes
    headers: tuple[tuple[bytes, bytes], ...] = ()


def _error(status: int, error: str, msg: str, *headers: tuple[bytes, bytes]) -> Refusal:
    return Refusal(status, error_body(error, ["header", "Authorization"], msg, error), headers)


def authorized(scope: Any, principal: Principal) -> Principal | Refusal:
    """The principal, or 403 when it has none of the route's roles."""
    needed = required_roles(scope["method"], scope["path"])
    if needed is not None and not principal.roles & needed:
        msg = f"this route needs one of the roles: {', '.join(sorted(needed))}"
        return _error(403, "insufficient_scope", msg)
    return principal


class JWTAuthMiddleware:
    """401 for a missing or bad token, 403 for a valid token without the route's role."""

    def __init__(self, app: Any, settings: Settings) -> None:
        self.app = app
        settings = settings.secured()  # refuses to start with an unsafe secret
        self.public = frozenset(settings.public_paths)
        self.enabled = settings.auth_enabled
        self.max_header = len("Bearer ") + settings.max_token_bytes
        self.verifier = Verifier(settings) if settings.auth_enabled else None
        self.users = directory(
            settings.sqlalchemy_url, settings.user_cache_seconds, settings.user_lookup_seconds
        )

    def is_public(self, path: str) -> bool:
        return path in self.public or path.startswith(PUBLIC_PREFIXES)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if path == "/docs.json":
            send = public_openapi(send)
        if not self.enabled or self.is_public(path):
            await self.app(scope, receive, send)
            return
        outcome = await self.check(scope)
        if isinstance(outcome, Principal):
            scope.setdefault("state", {})["principal"] = outcome
            await self.app(scope, receive, send)
            return
        await send_json(send, outcome.status, outcome.body, outcome.headers)

    async def check(self, scope: Any) -> Principal | Refusal:
        assert self.verifier is not None
        values = [v for k, v in scope["headers"] if k == b"authorization"]
        if not values:
            return self.unauthorized("missing bearer token", "invalid_request")
        if len(values) > 1:
            return self.unauthorized("more than one Authorization header", "invalid_request")
        if len(values[0]) > self.max_header:
            return self.unauthorized("token too long", "invalid_token")
        header = values[0].decode("latin-1").strip()
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or " " in token:
            return self.unauthorized("expected 'Authorization: Bearer <token>'", "invalid_request")
        try:
            claims = await self.verifier.verify(token)
        except ProviderUnavailable as exc:
            retry = (b"retry-after", str(exc.retry_after).encode())
            return _error(503, "temporarily_unavailable", str(exc), retry)
        except TokenError as exc:
            return self.unauthorized(str(exc), "invalid_token")
        if claims.provider:  # the provider vouches for it; there is no local user to look up
            return authorized(scope, Principal(claims.sub, frozenset(claims.roles)))
        try:
            state = await self.users.state(claims.sub)
        except Unreachable:
            # The signature, expiry, issuer and audience were verified; the token stands in for
            # its user, for predictions only (the routes that need no database).
            state = UserState(frozenset(claims.roles), -math.inf, verified=False)
        except LookupFailed:
            return self.unavailable()
        except Exception:  # noqa: BLE001 - a read that failed for its own sake
            log.exception("user lookup for a verified token failed")
            return self.unauthorized("unknown or disabled user", "invalid_token")
        if state is None:
            return self.unauthorized("unknown or disabled user", "invalid_token")
        if claims.iat < state.tokens_valid_after:
            return self.unauthorized("token was revoked", "invalid_token")
        # A token never grants more than the user has now, nor more than it was issued with;
        # nor, while the user cannot be read, more than a prediction (admin implies predict).
        roles = frozenset(claims.roles) & state.roles
        if not state.verified:
            roles = FALLBACK_ROLES if roles & (FALLBACK_ROLES | {ADMIN}) else frozenset()
            needed = required_roles(scope["method"], scope["path"])
            if needed is not None and not roles & needed:
                return self.unavailable()
        return authorized(scope, Principal(claims.sub, roles))

    @staticmethod
    def unavailable() -> Refusal:
        """503: the user's roles cannot be checked now (the database is away or failing)."""
        body = error_body(
            "temporarily_unavailable",
            ["header", "Authorization"],
            "the user directory cannot be read now; try again shortly",
            "temporarily_unavailable",
        )
        return Refusal(503, body, ((b"retry-after", RETRY_AFTER),))

    @staticmethod
    def unauthorized(msg: str, error: str) -> Refusal:
        # Only fixed texts reach the challenge; the sanitizing is a second line of defence.
        safe = CHALLENGE_UNSAFE.sub("", msg)[:100]
        challenge = f'Bearer realm="attrition", error="{error}", error_description="{safe}"'
        return _error(401, error, msg, (b"www-authenticate", challenge.encode()))


def public_openapi(send: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap `send` so the OpenAPI document declares bearer auth (Swagger UI gets 'Authorize')
    and advertises no library versions (BentoML's description carries its version badge)."""
    start: dict[str, Any] = {}
    chunks: list[bytes] = []

    async def wrapped(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            start.update(message)
            return
        chunks.append(message.get("body", b""))
        if message.get("more_body"):
            return
        body = b"".join(chunks)
        if start.get("status") == 200:
            spec = json.loads(body)
            info = spec.get("info", {})
            spec["info"] = {"title": info.get("title", "API"), "version": OPENAPI_VERSION}
            spec["info"]["description"] = OPENAPI_DESCRIPTION
            schemes = spec.setdefault("components", {}).setdefault("securitySchemes", {})
            schemes["bearerAuth"] = {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            spec["security"] = [{"bearerAuth": []}]
            body = json.dumps(spec).encode()
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        await send({**start, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return wrapped
