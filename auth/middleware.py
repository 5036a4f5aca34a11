"""Pure ASGI middleware: verify the bearer token, check the user and the route's role."""

import json
import logging
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlmodel import Session

from auth.tokens import ProviderUnavailable, TokenError, Verifier
from auth.users import get_user
from persistence.db import make_engine
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
# The public OpenAPI document's info: the API, not the libraries behind it.
OPENAPI_VERSION = "1"
OPENAPI_DESCRIPTION = (
    "Employee-attrition risk: score employees, read the prediction history. Get a token from "
    "POST /auth/token, then send it as 'Authorization: Bearer <token>'."
)
# Characters allowed in a WWW-Authenticate error_description (RFC 6750 3: no quote, no backslash).
CHALLENGE_UNSAFE = re.compile(r"[^A-Za-z0-9 .,:;'<>()_-]")


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


@dataclass(frozen=True)
class UserState:
    """What the database says about a token's subject now."""

    roles: frozenset[str]
    tokens_valid_after: float  # seconds since the epoch; tokens issued earlier are refused


def unreachable(exc: BaseException) -> bool:
    """The database could not be reached (connection refused or lost, pool exhausted, locked),
    as opposed to a lookup it refused or a bug."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, OperationalError | InterfaceError | PoolTimeout)


class UserDirectory:
    """Active flag, roles and token cut-off of users, read from the database and cached for a
    few seconds."""

    def __init__(self, url: str, ttl: float) -> None:
        self.url = url
        self.ttl = ttl
        self._engine: Any = None  # opened lazily: one per worker process
        self._cache: dict[str, tuple[float, UserState | None]] = {}

    def _load(self, username: str) -> UserState | None:
        if self._engine is None:
            self._engine = make_engine(self.url, pool_size=2)
        with Session(self._engine) as session:
            user = get_user(session=session, username=username)
            if user is None or not user.is_active:
                return None
            return UserState(frozenset(user.roles), user.tokens_valid_after.timestamp())

    async def state(self, username: str) -> UserState | None:
        """The active user's state, or None for an unknown or disabled user."""
        hit = self._cache.get(username)
        now = time.monotonic()
        if hit and now - hit[0] < self.ttl:
            return hit[1]
        try:
            state = await anyio.to_thread.run_sync(self._load, username)
        except Exception as exc:
            if hit and unreachable(exc):  # the last known state beats refusing everyone
                log.warning("user lookup failed; using cached state of %r", username)
                return hit[1]
            raise
        self._cache[username] = (now, state)
        return state


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
        self.users = UserDirectory(settings.sqlalchemy_url, settings.user_cache_seconds)

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
        except Exception as exc:  # noqa: BLE001 - classified below
            if not unreachable(exc):
                log.exception("user lookup for a verified token failed")
                return self.unauthorized("unknown or disabled user", "invalid_token")
            # Availability over revocation while the database is away: the signature, expiry,
            # issuer and audience were verified, so the token's own roles are used. Routes that
            # read the database fail on their own (503); predictions keep being served.
            log.warning(
                "user lookup for %r failed (%s); trusting the verified token", claims.sub, exc
            )
            state = UserState(frozenset(claims.roles), tokens_valid_after=-math.inf)
        if state is None:
            return self.unauthorized("unknown or disabled user", "invalid_token")
        if claims.iat < state.tokens_valid_after:
            return self.unauthorized("token was revoked", "invalid_token")
        # A token never grants more than the user has now, nor more than it was issued with.
        return authorized(scope, Principal(claims.sub, frozenset(claims.roles) & state.roles))

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
