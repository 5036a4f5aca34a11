"""Access tokens from an OpenID provider (Keycloak, Entra ID, Okta, Auth0...): discovery, a key
cache that outlives the provider's outages, and the mapping of its roles to the service's.

Transport-free: `ProviderVerifier.verify(token)` returns Claims or raises TokenError, whoever
calls it. Keys are fetched on a thread of their own, never on the caller's event loop; callers
that need a key not seen yet share one fetch and wait for it at most oidc_fetch_timeout_seconds.
"""

import asyncio
import concurrent.futures
import json
import logging
import math
import re
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import jwt

from auth.tokens import (
    Claims,
    ProviderUnavailable,
    TokenError,
    VerifiedCache,
    check_subject,
    checked_claims,
    unverified_header,
)
from persistence.models import ROLES, USERNAME_PATTERN
from settings import Settings

log = logging.getLogger("attrition.auth.oidc")

DISCOVERY_PATH = "/.well-known/openid-configuration"
# A discovery document or key set is a few KB; anything much larger is not one.
MAX_DOCUMENT_BYTES = 1 << 20


class ProviderError(Exception):
    """The provider could not be asked, or answered with something that is not what OIDC says."""


@dataclass(frozen=True)
class ProviderKey:
    kid: str | None
    algorithm: str  # the one algorithm this key verifies; never taken from a token
    jwk: jwt.PyJWK


def parse_keys(document: Any, algorithms: frozenset[str]) -> dict[str | None, ProviderKey]:
    """The usable signing keys of a JWKS by kid; ProviderError when there is none.

    A key is pinned to its `alg`, or, without one, to RS256 (RSA) or the ES algorithm of its
    curve (EC). Keys for encryption, symmetric keys, private keys and keys for algorithms not
    in `algorithms` are left out.
    """
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ProviderError("the JWKS has no 'keys' list")
    keys: dict[str | None, ProviderKey] = {}
    for data in document["keys"]:
        if not isinstance(data, dict) or data.get("use", "sig") != "sig":
            continue
        kid = data.get("kid")
        if data.get("kty") == "oct" or "d" in data or not isinstance(kid, str | None):
            log.warning("ignoring key %r of the provider's JWKS: not a public signing key", kid)
            continue
        try:
            jwk = jwt.PyJWK(data)
        except jwt.PyJWTError as exc:
            log.warning("ignoring key %r of the provider's JWKS: %s", kid, exc)
            continue
        if jwk.algorithm_name not in algorithms or kid in keys:
            continue
        keys[kid] = ProviderKey(kid, jwk.algorithm_name, jwk)
    if not keys:
        raise ProviderError("the JWKS has no usable signing key")
    return keys


class ProviderKeys:
    """The provider's signing keys, fetched on a thread and kept through failed fetches.

    - used for `max_age` seconds, then fetched again in the background while the old set keeps
      answering (a withdrawn key stops working within max_age plus one fetch);
    - a token with an unknown kid triggers a fetch, unless another unknown kid did less than
      `cooldown` seconds ago; concurrent callers share the fetch in flight;
    - a failed fetch keeps the keys there are (PyJWT issue #1162 was a failure wiping them),
      and the next try waits for the cooldown;
    - nobody waits longer than `timeout` for a fetch; each HTTP request has the same timeout.
    """

    def __init__(
        self,
        issuer: str,
        *,
        algorithms: frozenset[str],
        max_age: float,
        cooldown: float,
        timeout: float,
        verify: ssl.SSLContext | bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.issuer = issuer
        self.algorithms = algorithms
        self.max_age = max_age
        self.cooldown = cooldown
        self.timeout = timeout
        self.clock = clock
        self.jwks_uri: str | None = None
        self.keys: dict[str | None, ProviderKey] = {}  # replaced whole, never changed in place
        self.fetched_at = -math.inf  # last successful fetch
        self.attempted_at = -math.inf  # last fetch started
        self.forced_at = -math.inf  # last fetch started for an unknown kid
        self.failure: str | None = None  # why the last fetch failed; None after a success
        self.fetches = 0  # fetches started (for tests and the load script)
        self._lock = threading.Lock()
        self._inflight: concurrent.futures.Future[None] | None = None
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="oidc-keys")
        # No redirects: the keys come from the URL the issuer's discovery names, nowhere else.
        self._http = httpx.Client(timeout=timeout, verify=verify, follow_redirects=False)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._http.close()

    def load(self) -> None:
        """Fetch now, for a start-up check: ProviderError (naming the issuer) on failure."""
        fetch = self._start("load")
        assert fetch is not None  # forced
        try:
            fetch.result(timeout=2 * self.timeout + 1)
        except concurrent.futures.TimeoutError:
            raise ProviderError(
                f"identity provider {self.issuer} did not answer within {2 * self.timeout + 1:g}s"
            ) from None

    @property
    def inflight(self) -> "concurrent.futures.Future[None] | None":
        """The fetch started last (done or not), if any."""
        return self._inflight

    def refresh_soon(self) -> "concurrent.futures.Future[None] | None":
        """Start a fetch in the background (the keys are old, or a worker starts) unless one
        runs; after a failed fetch, not before the cooldown has passed."""
        return self._start("refresh")

    def _start(self, why: str) -> "concurrent.futures.Future[None] | None":
        """The fetch in flight, a new one, or None when the cooldown forbids one. Only fetches
        for unknown kids count toward their cooldown, so a key published just after a routine
        fetch is fetched at once; retries of a failing provider wait for the cooldown too."""
        with self._lock:
            if self._inflight is not None and not self._inflight.done():
                return self._inflight
            now = self.clock()
            if why == "unknown" and now - self.forced_at < self.cooldown:
                return None
            retrying = self.failure is not None and now - self.attempted_at < self.cooldown
            if retrying and why != "load":
                return None
            self.attempted_at = now
            if why == "unknown":
                self.forced_at = now
            self.fetches += 1
            self._inflight = self._pool.submit(self._fetch)
            return self._inflight

    def _fetch(self) -> None:
        try:
            if self.jwks_uri is None:
                self.jwks_uri = self._discover()
            keys = parse_keys(self._get_json(self.jwks_uri), self.algorithms)
        except ProviderError as exc:
            self.failure = str(exc)
            log.warning("%s; keeping %d cached keys", exc, len(self.keys))
            raise
        self.keys = keys
        self.fetched_at = self.clock()
        self.failure = None

    def _discover(self) -> str:
        document = self._get_json(self.issuer.rstrip("/") + DISCOVERY_PATH)
        if not isinstance(document, dict) or document.get("issuer") != self.issuer:
            found = document.get("issuer") if isinstance(document, dict) else None
            raise ProviderError(
                f"identity provider {self.issuer}: its discovery document names issuer {found!r}"
            )
        uri = document.get("jwks_uri")
        if not isinstance(uri, str) or not uri.startswith(("https://", "http://")):
            raise ProviderError(f"identity provider {self.issuer}: no jwks_uri in its discovery")
        return uri

    def _get_json(self, url: str) -> Any:
        try:
            with self._http.stream("GET", url, headers={"Accept": "application/json"}) as response:
                if response.status_code != 200:
                    raise ProviderError(
                        f"identity provider {self.issuer}: {url} answered {response.status_code}"
                    )
                body = bytearray()
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > MAX_DOCUMENT_BYTES:
                        raise ProviderError(f"identity provider {self.issuer}: {url} is too large")
            return json.loads(body)
        except httpx.HTTPError as exc:
            reason = str(exc) or type(exc).__name__
            raise ProviderError(f"identity provider {self.issuer} unreachable: {reason}") from exc
        except ValueError as exc:
            raise ProviderError(f"identity provider {self.issuer}: {url} is not JSON") from exc

    def stale(self) -> bool:
        return self.clock() - self.fetched_at > self.max_age

    def current(self, kid: str | None) -> ProviderKey | None:
        """The cached key, fetching in the background when the set has grown old."""
        if self.stale():
            self.refresh_soon()
        if kid is None:  # RFC 7515 makes kid optional; unambiguous only with a single key
            keys = self.keys
            return next(iter(keys.values())) if len(keys) == 1 else None
        return self.keys.get(kid)

    async def key(self, kid: str | None) -> ProviderKey:
        """The key with this kid: from the cache, or after a shared fetch; at most `timeout`
        seconds of waiting in all."""
        key = self.current(kid)
        if key is not None:
            return key
        if kid is None:
            raise TokenError("token has no 'kid' and the provider has several keys")
        deadline = self.clock() + self.timeout
        # A fetch in flight (a routine refresh, another caller's) may have started before the
        # key was published; when it ends without the key, one fetch of our own follows.
        for _ in range(2):
            asked = self.clock()
            fetch = self._start("unknown")
            if fetch is None:  # cooling down after a recent fetch
                break
            await self._wait(fetch, deadline - self.clock())
            key = self.keys.get(kid)
            if key is not None:
                return key
            if self.forced_at >= asked:  # that fetch was ours
                break
        if self.failure is not None:
            raise ProviderUnavailable(
                "identity provider unreachable; retry shortly", self.retry_after()
            )
        raise TokenError("unknown signing key")

    def retry_after(self) -> float:
        """Seconds until the next fetch may start."""
        return max(self.attempted_at, self.forced_at) + self.cooldown - self.clock()

    async def _wait(self, fetch: "concurrent.futures.Future[None]", timeout: float) -> None:
        waiter = asyncio.wrap_future(fetch)
        # asyncio.wait leaves the fetch running on timeout (others may be waiting for it); the
        # callback collects its outcome so an abandoned waiter logs nothing.
        waiter.add_done_callback(lambda f: f.cancelled() or f.exception())
        done, _ = await asyncio.wait([waiter], timeout=max(0.0, timeout))
        if not done:
            raise ProviderUnavailable(
                "identity provider did not answer in time; retry shortly", self.retry_after()
            )
        if waiter.exception() is not None:
            raise ProviderUnavailable(
                "identity provider unreachable; retry shortly", self.retry_after()
            )


def claim_at(raw: dict[str, Any], path: str) -> Any:
    """A claim by name, or by dotted path into nested objects (realm_access.roles). A name
    that is itself a claim wins: Auth0's namespaced claims are URLs with dots."""
    if path in raw:
        return raw[path]
    value: Any = raw
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


class RoleMapping:
    """The service's roles for a provider's token: from one claim, through the role map."""

    def __init__(self, claim: str, mapping: dict[str, list[str]]) -> None:
        unknown = sorted({r for roles in mapping.values() for r in roles} - set(ROLES))
        if unknown:
            raise ValueError(
                f"ATTRITION_OIDC_ROLE_MAP maps to {', '.join(unknown)}; "
                f"the service's roles are {', '.join(ROLES)}"
            )
        self.claim = claim
        # Empty: provider roles named like the service's count as they are.
        self.mapping = {k: tuple(v) for k, v in mapping.items()} or {r: (r,) for r in ROLES}

    def roles(self, raw: dict[str, Any]) -> tuple[str, ...]:
        value = claim_at(raw, self.claim)
        if value is None:
            return ()
        if isinstance(value, str):  # scope, scp: space-separated (RFC 6749 3.3)
            names = value.split()
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            names = value
        else:
            raise TokenError(
                f"claim {self.claim!r} must be a list of strings or a space-separated string"
            )
        return tuple(sorted({role for name in names for role in self.mapping.get(name, ())}))


def subject_prefix(settings: Settings) -> str:
    """What qualifies a provider's `sub`; it must not be a possible local username's start."""
    assert settings.oidc_issuer is not None
    prefix = (
        settings.oidc_subject_prefix
        if settings.oidc_subject_prefix is not None
        else settings.oidc_issuer + "#"
    )
    if re.fullmatch(USERNAME_PATTERN, prefix + "x"):
        raise ValueError(
            f"ATTRITION_OIDC_SUBJECT_PREFIX {prefix!r} could start a local username; "
            "put a ':' or '#' in it"
        )
    return prefix


def ssl_verify(settings: Settings) -> ssl.SSLContext | bool:
    if settings.oidc_ca_file is None:
        return True
    return ssl.create_default_context(cafile=str(settings.oidc_ca_file))


def provider_keys(settings: Settings) -> ProviderKeys:
    assert settings.oidc_issuer is not None
    return ProviderKeys(
        settings.oidc_issuer,
        algorithms=frozenset(settings.oidc_algorithms),
        max_age=settings.oidc_jwks_max_age_seconds,
        cooldown=settings.oidc_refresh_cooldown_seconds,
        timeout=settings.oidc_fetch_timeout_seconds,
        verify=ssl_verify(settings),
    )


def check_provider(settings: Settings) -> None:
    """Start-up check: the provider's discovery and keys can be fetched now, or ProviderError
    with one line naming the issuer. Does nothing without ATTRITION_OIDC_ISSUER."""
    if settings.oidc_issuer is None:
        return
    subject_prefix(settings)
    RoleMapping(settings.oidc_roles_claim, settings.oidc_role_map)
    keys = provider_keys(settings)
    try:
        keys.load()
        log.info("identity provider %s: %d signing keys", settings.oidc_issuer, len(keys.keys))
    finally:
        keys.close()


class ProviderVerifier:
    """Verifies the provider's access tokens: signature by a key of its JWKS with that key's
    one algorithm, then iss, aud, exp/nbf/iat and sub; roles from the mapping."""

    def __init__(self, settings: Settings) -> None:
        assert settings.oidc_issuer is not None and settings.oidc_audience is not None
        self.issuer = settings.oidc_issuer
        self.audience = settings.oidc_audience
        self.leeway = settings.jwt_leeway_seconds
        self.algorithms = frozenset(settings.oidc_algorithms)
        self.prefix = subject_prefix(settings)
        self.mapping = RoleMapping(settings.oidc_roles_claim, settings.oidc_role_map)
        self.keys = provider_keys(settings)
        self.keys.refresh_soon()  # warm up off the loop; the first request joins this fetch
        self.cache = VerifiedCache(self.leeway)

    async def verify(self, token: str) -> Claims:
        claims = self.cache.get(token)
        if claims is not None:
            if self.keys.current(claims.kid) is not None:
                return claims
            self.cache.drop(token)  # its key was withdrawn
            raise TokenError("unknown signing key")
        header = unverified_header(token)
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in self.algorithms:  # none, HS256 and friends never reach a key
            raise TokenError("token algorithm is not accepted")
        if not isinstance(kid, str | None):
            raise TokenError("malformed token")
        key = await self.keys.key(kid)
        if alg != key.algorithm:
            raise TokenError("token algorithm does not match its key")
        raw = checked_claims(
            token,
            key.jwk,
            algorithms=[key.algorithm],
            audience=self.audience,
            issuer=self.issuer,
            leeway=self.leeway,
            strict_aud=False,  # access tokens may name several audiences (Keycloak: "account")
        )
        claims = Claims(
            sub=check_subject(self.prefix + check_subject(raw.get("sub"))),
            roles=self.mapping.roles(raw),
            iat=float(raw["iat"]),
            exp=float(raw["exp"]),
            raw=raw,
            provider=True,
            kid=kid,
        )
        # Without a kid, a cache hit could not tell whether the one key is still that key.
        return self.cache.put(token, claims) if kid is not None else claims


_shared: dict[str, ProviderVerifier] = {}
_shared_lock = threading.Lock()


def shared_verifier(settings: Settings) -> ProviderVerifier:
    """One verifier per process and settings: the fast path's check and the middleware's (which
    answers what the fast path refused) share keys, fetches and verified tokens, so a request
    never waits for two fetches."""
    key = settings.model_dump_json()
    with _shared_lock:
        if key not in _shared:
            _shared[key] = ProviderVerifier(settings)
        return _shared[key]
