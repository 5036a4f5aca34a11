"""Tokens from an OpenID provider without a server of ours: the key cache (refresh on an unknown
kid, cooldown, one shared fetch, kept through failures, bounded waits), keys pinned to one
algorithm, claim checks, role mapping, subjects, and the verifier that picks by issuer."""

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from auth.middleware import JWTAuthMiddleware, Principal, Refusal
from auth.oidc import (
    ProviderError,
    ProviderKeys,
    ProviderVerifier,
    RoleMapping,
    check_provider,
    claim_at,
    parse_keys,
)
from auth.tokens import ProviderUnavailable, TokenError, Verifier, create_token
from loadtests.oidc_provider import signing_key
from settings import Settings
from tests.auth.jwks_server import JWKSServer, public, serving

SECRET = "o" * 48
AUDIENCE = "urn:attrition:api"
ALGORITHMS = frozenset({"RS256", "PS256", "ES256"})


@pytest.fixture(scope="module")
def rsa_key() -> dict[str, Any]:
    return signing_key("RS256", "rsa-1")


@pytest.fixture(scope="module")
def ec_key() -> dict[str, Any]:
    return signing_key("ES256", "ec-1", publish_alg=False)  # as Entra ID: no alg in the JWK


@pytest.fixture
def idp(rsa_key: dict[str, Any], ec_key: dict[str, Any]) -> Iterator[JWKSServer]:
    with serving(JWKSServer([rsa_key, ec_key])) as server:
        yield server


def settings_for(server: JWKSServer, tmp_path: Path, **over: Any) -> Settings:
    values: dict[str, Any] = {
        "jwt_secret": SECRET,
        "oidc_issuer": server.issuer,
        "oidc_audience": AUDIENCE,
        "oidc_fetch_timeout_seconds": 1.0,
        "database_url": f"sqlite:///{tmp_path / 'none' / 'users.db'}",  # never opened
        **over,
    }
    return Settings(**values).secured()


def warm(verifier: ProviderVerifier) -> ProviderVerifier:
    """The verifier once its start-up fetch is over."""
    if verifier.keys.inflight is not None:
        verifier.keys.inflight.result(timeout=10)
    return verifier


def verify(verifier: ProviderVerifier | Verifier, token: str) -> Any:
    return asyncio.run(verifier.verify(token))


def test_provider_token_verifies_with_qualified_subject_and_mapped_roles(
    idp: JWKSServer, rsa_key: dict[str, Any], tmp_path: Path
) -> None:
    settings = settings_for(idp, tmp_path, oidc_role_map="hr-analyst=predict,hr-analyst=history")
    verifier = warm(ProviderVerifier(settings))
    claims = verify(verifier, idp.sign(idp.claims(roles=["hr-analyst", "other"]), rsa_key))
    assert claims.provider and claims.sub == f"{idp.issuer}#client-1"
    assert claims.roles == ("history", "predict")


@pytest.mark.parametrize("key_name", ["rsa_key", "ec_key"])
def test_each_key_verifies_its_own_algorithm(
    idp: JWKSServer, key_name: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    key = request.getfixturevalue(key_name)
    verifier = warm(ProviderVerifier(settings_for(idp, tmp_path)))
    assert verify(verifier, idp.sign(idp.claims(), key)).sub.endswith("#client-1")


def test_ps256_key(tmp_path: Path) -> None:
    key = signing_key("PS256", "ps-1")
    with serving(JWKSServer([key])) as idp:
        verifier = warm(ProviderVerifier(settings_for(idp, tmp_path)))
        assert verify(verifier, idp.sign(idp.claims(), key)).provider
        with pytest.raises(TokenError, match="does not match its key"):  # same RSA key, RS256
            verify(verifier, idp.sign(idp.claims(), key, alg="RS256"))


# --- alg confusion ---------------------------------------------------------------------------


def hs256_with(secret: bytes, claims: dict[str, Any], kid: str) -> str:
    header = jwt.utils.base64url_encode(json.dumps({"alg": "HS256", "kid": kid}).encode())
    payload = jwt.utils.base64url_encode(json.dumps(claims).encode())
    sig = hmac.new(secret, header + b"." + payload, hashlib.sha256).digest()
    return (header + b"." + payload + b"." + jwt.utils.base64url_encode(sig)).decode()


def test_hs256_signed_with_the_providers_public_key_is_refused(
    idp: JWKSServer, rsa_key: dict[str, Any], tmp_path: Path
) -> None:
    verifier = warm(ProviderVerifier(settings_for(idp, tmp_path)))
    pem = verifier.keys.keys["rsa-1"].jwk.key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for secret in (pem, json.dumps(public(rsa_key)).encode()):
        with pytest.raises(TokenError, match="algorithm is not accepted"):
            verify(verifier, hs256_with(secret, idp.claims(), "rsa-1"))


def test_header_alg_other_than_the_keys_is_refused(
    idp: JWKSServer, rsa_key: dict[str, Any], ec_key: dict[str, Any], tmp_path: Path
) -> None:
    verifier = warm(ProviderVerifier(settings_for(idp, tmp_path)))
    # An ES256 signature presented under the RSA key's kid, and the other way round.
    forged_ec = idp.sign(idp.claims(), ec_key, kid="rsa-1")
    forged_rsa = idp.sign(idp.claims(), rsa_key, kid="ec-1")
    ps_under_rs = idp.sign(idp.claims(), rsa_key, alg="PS256")
    for token in (forged_ec, forged_rsa, ps_under_rs):
        with pytest.raises(TokenError, match="does not match its key"):
            verify(verifier, token)


def test_unsigned_token_is_refused(idp: JWKSServer, tmp_path: Path) -> None:
    verifier = warm(ProviderVerifier(settings_for(idp, tmp_path)))
    token = jwt.encode(idp.claims(), None, algorithm="none", headers={"kid": "rsa-1"})
    with pytest.raises(TokenError, match="algorithm is not accepted"):
        verify(verifier, token)


def test_symmetric_private_and_encryption_keys_of_a_jwks_are_never_used(
    rsa_key: dict[str, Any],
) -> None:
    oct_key = {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0", "alg": "HS256"}
    private = {**rsa_key, "kid": "leaked"}  # a provider publishing its private key
    enc = {**public(rsa_key), "kid": "enc", "use": "enc"}
    es512 = public(signing_key("ES256", "weird"))
    es512["alg"] = "ES512"  # an algorithm not allowed (and not the key's curve)
    keys = parse_keys({"keys": [oct_key, private, enc, es512, public(rsa_key)]}, ALGORITHMS)
    assert list(keys) == ["rsa-1"] and keys["rsa-1"].algorithm == "RS256"
    with pytest.raises(ProviderError, match="no usable signing key"):
        parse_keys({"keys": [oct_key, private]}, ALGORITHMS)
    with pytest.raises(ProviderError, match="no 'keys' list"):
        parse_keys({"keys": "x"}, ALGORITHMS)


# --- claims ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"iss": "https://other.example"}, "wrong issuer"),
        ({"aud": "another-api"}, "wrong audience"),
        ({"exp": time.time() - 3600}, "expired"),
        ({"nbf": time.time() + 3600}, "not valid yet"),
        ({"sub": None}, "missing claim 'sub'"),
        ({"sub": ""}, "non-empty"),
        ({"sub": "x" * 250}, "too long"),  # with the issuer before it, past the column's 255
        ({"roles": {"predict": True}}, "list of strings or a space-separated string"),
    ],
)
def test_bad_claims_are_refused(
    idp: JWKSServer, rsa_key: dict[str, Any], change: dict[str, Any], message: str, tmp_path: Path
) -> None:
    verifier = warm(ProviderVerifier(settings_for(idp, tmp_path)))
    claims = {k: v for k, v in idp.claims(**change).items() if v is not None}
    with pytest.raises(TokenError, match=message):
        verify(verifier, idp.sign(claims, rsa_key))


def test_audience_may_be_one_of_several(
    idp: JWKSServer, rsa_key: dict[str, Any], tmp_path: Path
) -> None:
    verifier = warm(ProviderVerifier(settings_for(idp, tmp_path)))
    assert verify(verifier, idp.sign(idp.claims(aud=["account", AUDIENCE]), rsa_key)).provider


@pytest.mark.parametrize(
    ("claim", "value", "mapping", "roles"),
    [
        ("roles", ["predict", "admin", "unknown"], {}, ("admin", "predict")),
        ("scope", "openid predict history", {}, ("history", "predict")),
        ("realm_access.roles", ["hr"], {"hr": ["predict", "outcomes"]}, ("outcomes", "predict")),
        ("groups", ["/hr/analysts"], {"/hr/analysts": ["history"]}, ("history",)),
        ("https://attrition.example.com/roles", ["admin"], {}, ("admin",)),  # Auth0: a URL
        ("roles", ["predict"], {"hr": ["predict"]}, ()),  # with a map, only mapped names count
        ("roles", None, {}, ()),
    ],
)
def test_roles_from_the_configured_claim(
    claim: str, value: Any, mapping: dict[str, list[str]], roles: tuple[str, ...]
) -> None:
    raw: dict[str, Any] = {}
    if value is not None:
        if claim == "realm_access.roles":
            raw["realm_access"] = {"roles": value}
        else:
            raw[claim] = value
    assert RoleMapping(claim, mapping).roles(raw) == roles


def test_claim_paths() -> None:
    raw = {"resource_access": {"attrition-api": {"roles": ["a"]}}, "a.b": 1, "a": {"b": 2}}
    assert claim_at(raw, "resource_access.attrition-api.roles") == ["a"]
    assert claim_at(raw, "a.b") == 1  # the claim named so wins over the path
    assert claim_at(raw, "resource_access.missing.roles") is None


def test_role_map_to_an_unknown_service_role_is_refused(idp: JWKSServer, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="the service's roles are"):
        ProviderVerifier(settings_for(idp, tmp_path, oidc_role_map='{"hr": ["superuser"]}'))


# --- the key cache ---------------------------------------------------------------------------


def test_unknown_kid_fetches_once_then_cools_down(
    idp: JWKSServer, rsa_key: dict[str, Any], tmp_path: Path
) -> None:
    verifier = warm(ProviderVerifier(settings_for(idp, tmp_path)))
    assert idp.fetches == 1
    for n in range(20):  # a flood of made-up kids
        with pytest.raises(TokenError, match="unknown signing key"):
            verify(verifier, idp.sign(idp.claims(), rsa_key, kid=f"forged-{n}"))
    assert idp.fetches == 2  # one refresh, then the cooldown


def test_rotated_key_works_at_once_and_withdrawn_key_stops_after_max_age(
    idp: JWKSServer, rsa_key: dict[str, Any], tmp_path: Path
) -> None:
    settings = settings_for(idp, tmp_path, oidc_jwks_max_age_seconds=0.5)
    verifier = warm(ProviderVerifier(settings))
    old = idp.sign(idp.claims(), rsa_key)
    assert verify(verifier, old).provider
    new_key = signing_key("RS256", "rsa-2")
    idp.keys = [new_key, rsa_key]  # the provider publishes the new key and signs with it
    assert verify(verifier, idp.sign(idp.claims(), new_key)).provider  # an unknown kid: fetched
    idp.keys = [new_key]  # the old key withdrawn
    assert verify(verifier, old).provider  # still cached
    time.sleep(0.6)
    assert verify(verifier, old).provider  # stale: answered from the cache, refreshed behind
    assert verifier.keys.inflight is not None
    verifier.keys.inflight.result(timeout=10)
    with pytest.raises(TokenError, match="unknown signing key"):
        verify(verifier, old)


def test_key_published_during_a_routine_refresh_is_fetched_again(
    idp: JWKSServer, rsa_key: dict[str, Any], tmp_path: Path
) -> None:
    """A token with the new kid joins the refresh in flight, which answers the old set; it must
    not be refused for that, but fetch once more."""
    settings = settings_for(
        idp, tmp_path, oidc_jwks_max_age_seconds=0.3, oidc_fetch_timeout_seconds=5
    )
    verifier = warm(ProviderVerifier(settings))
    new_key = signing_key("RS256", "rsa-new")
    token = idp.sign(idp.claims(), new_key)
    idp.delay = 1.0
    time.sleep(0.4)
    verifier.keys.current("rsa-1")  # stale: a refresh starts
    while idp.fetches < 2:  # until the provider has its answer, [rsa-1], on the way
        time.sleep(0.01)
    idp.keys = [new_key, rsa_key]
    assert verify(verifier, token).provider
    assert idp.fetches == 3  # the warm-up, the routine refresh, ours


def test_failed_refresh_keeps_the_cached_keys(
    idp: JWKSServer, rsa_key: dict[str, Any], tmp_path: Path
) -> None:
    """PyJWT issue #1162: a failed fetch wiped the cache. Here the keys outlive any failure."""
    settings = settings_for(idp, tmp_path, oidc_jwks_max_age_seconds=0.2)
    verifier = warm(ProviderVerifier(settings))
    token = idp.sign(idp.claims(sub="other"), rsa_key)
    for trouble in ("500", "garbage", "no keys", "down"):
        if trouble == "500":
            idp.status = 500
        elif trouble == "garbage":
            idp.status, idp.extra, idp.keys = 200, [{"kty": "oct", "k": "AA"}], []
        elif trouble == "no keys":
            idp.extra = []
        else:
            idp.down()
        time.sleep(0.3)
        verifier.keys.cooldown = 0  # let every stale check try again
        assert verify(verifier, token).provider
        assert verifier.keys.inflight is not None
        with pytest.raises(ProviderError):
            verifier.keys.inflight.result(timeout=10)
        assert "rsa-1" in verifier.keys.keys and verifier.keys.failure is not None


def test_provider_down_with_an_unknown_kid_answers_503_within_the_bound(
    idp: JWKSServer, rsa_key: dict[str, Any], tmp_path: Path
) -> None:
    verifier = warm(ProviderVerifier(settings_for(idp, tmp_path, oidc_fetch_timeout_seconds=0.5)))
    idp.delay = 5  # a provider that accepts connections and never answers in time
    started = time.monotonic()
    with pytest.raises(ProviderUnavailable) as refused:
        verify(verifier, idp.sign(idp.claims(), rsa_key, kid="new"))
    assert time.monotonic() - started < 2.5  # the bound (0.5 s) with room for a loaded machine
    assert refused.value.retry_after >= 1
    # Within the cooldown no fetch starts, and the failure still says 503, not 401.
    idp.delay = 0
    with pytest.raises(ProviderUnavailable):
        verify(verifier, idp.sign(idp.claims(), rsa_key, kid="newer"))


def test_concurrent_unknown_kids_share_one_fetch_off_the_event_loop(
    idp: JWKSServer, rsa_key: dict[str, Any], tmp_path: Path
) -> None:
    verifier = warm(ProviderVerifier(settings_for(idp, tmp_path, oidc_fetch_timeout_seconds=5)))
    new_key = signing_key("RS256", "rsa-new")
    idp.keys = [new_key, rsa_key]
    idp.delay = 0.5
    tokens = [idp.sign(idp.claims(sub=f"c{n}"), new_key) for n in range(50)]

    async def run() -> tuple[list[Any], float]:
        gaps: list[float] = []
        done = False

        async def ticker() -> None:  # how long the loop goes without running us
            last = time.monotonic()
            while not done:
                await asyncio.sleep(0.01)
                now = time.monotonic()
                gaps.append(now - last)
                last = now

        tick = asyncio.create_task(ticker())
        results = await asyncio.gather(*(verifier.verify(t) for t in tokens))
        done = True
        await tick
        return list(results), max(gaps)

    results, worst_gap = asyncio.run(run())
    assert all(c.provider for c in results)
    assert idp.fetches == 2  # the warm-up and one shared refresh
    assert worst_gap < 0.3  # the 0.5 s fetch never held the loop


def test_token_without_kid_needs_a_single_key(
    idp: JWKSServer, rsa_key: dict[str, Any], tmp_path: Path
) -> None:
    verifier = warm(ProviderVerifier(settings_for(idp, tmp_path)))
    token = jwt.encode(idp.claims(), jwt.PyJWK(rsa_key).key, algorithm="RS256")
    with pytest.raises(TokenError, match="no 'kid'"):
        verify(verifier, token)
    with serving(JWKSServer([rsa_key])) as single:
        verifier = warm(ProviderVerifier(settings_for(single, tmp_path)))
        claims = single.claims()
        assert verify(verifier, jwt.encode(claims, jwt.PyJWK(rsa_key).key, algorithm="RS256"))


def test_discovery_naming_another_issuer_is_refused(idp: JWKSServer, tmp_path: Path) -> None:
    idp.issuer_override = "https://evil.example"
    with pytest.raises(ProviderError, match="names issuer 'https://evil.example'"):
        check_provider(settings_for(idp, tmp_path))


def test_start_up_check_fails_in_one_line_naming_the_issuer(tmp_path: Path) -> None:
    with serving(JWKSServer([])) as gone:
        gone.down()
        started = time.monotonic()
        with pytest.raises(ProviderError) as failed:
            check_provider(settings_for(gone, tmp_path))
    assert time.monotonic() - started < 5
    message = str(failed.value)
    assert "\n" not in message and gone.issuer in message and "unreachable" in message


def test_keys_load_is_bounded_when_the_provider_hangs(idp: JWKSServer, tmp_path: Path) -> None:
    idp.delay = 10
    keys = ProviderKeys(idp.issuer, algorithms=ALGORITHMS, max_age=60, cooldown=0, timeout=0.3)
    started = time.monotonic()
    with pytest.raises(ProviderError):
        keys.load()
    assert time.monotonic() - started < 3
    keys.close()


# --- both issuers together ----------------------------------------------------------------


def test_local_and_provider_tokens_together(
    idp: JWKSServer, rsa_key: dict[str, Any], tmp_path: Path
) -> None:
    settings = settings_for(idp, tmp_path)
    verifier = Verifier(settings)
    warm(verifier.provider)
    local = verify(verifier, create_token(settings, subject="amy", roles=["predict"]))
    assert local.sub == "amy" and not local.provider
    provider = verify(verifier, idp.sign(idp.claims(), rsa_key))
    assert provider.provider and provider.sub == f"{idp.issuer}#client-1"
    # A local HS256 token claiming the provider's issuer goes to the provider and is refused.
    forged = jwt.encode(idp.claims(), SECRET, algorithm="HS256", headers={"kid": "rsa-1"})
    with pytest.raises(TokenError, match="algorithm is not accepted"):
        verify(verifier, forged)


def test_local_tokens_can_be_turned_off(
    idp: JWKSServer, rsa_key: dict[str, Any], tmp_path: Path
) -> None:
    local_settings = Settings(jwt_secret=SECRET).secured()
    settings = settings_for(idp, tmp_path, local_tokens=False)
    verifier = Verifier(settings)
    warm(verifier.provider)
    with pytest.raises(TokenError, match="algorithm is not accepted"):  # only the provider's
        verify(verifier, create_token(local_settings, subject="amy", roles=["predict"]))
    assert verify(verifier, idp.sign(idp.claims(), rsa_key)).provider


def check(mw: JWTAuthMiddleware, token: str, path: str = "/predict/attrition") -> Any:
    scope = {
        "type": "http",
        "method": "POST",
        "path": path,
        "headers": [(b"authorization", f"Bearer {token}".encode())],
    }
    return asyncio.run(mw.check(scope))


def test_middleware_takes_provider_roles_without_a_local_user(
    idp: JWKSServer, rsa_key: dict[str, Any], tmp_path: Path
) -> None:
    """The users table is never read for a provider's token (its database does not exist)."""
    mw = JWTAuthMiddleware(None, settings_for(idp, tmp_path))
    warm(mw.verifier.provider)
    allowed = check(mw, idp.sign(idp.claims(roles=["predict"]), rsa_key))
    assert allowed == Principal(f"{idp.issuer}#client-1", frozenset({"predict"}))
    refused = check(mw, idp.sign(idp.claims(roles=["history"]), rsa_key))
    assert isinstance(refused, Refusal) and refused.status == 403


def test_middleware_answers_503_with_retry_after_when_keys_cannot_be_had(
    idp: JWKSServer, rsa_key: dict[str, Any], tmp_path: Path
) -> None:
    mw = JWTAuthMiddleware(None, settings_for(idp, tmp_path))
    warm(mw.verifier.provider)
    idp.down()
    refused = check(mw, idp.sign(idp.claims(), rsa_key, kid="rotated"))
    assert isinstance(refused, Refusal) and refused.status == 503
    assert b"temporarily_unavailable" in refused.body
    assert dict(refused.headers)[b"retry-after"].isdigit()
    assert isinstance(check(mw, idp.sign(idp.claims(), rsa_key)), Principal)  # cached key


def test_fast_path_and_middleware_share_one_verifier_so_a_refusal_waits_once(
    idp: JWKSServer, rsa_key: dict[str, Any], tmp_path: Path
) -> None:
    """The fast path's refusal is answered again by the middleware (the full stack): with a
    hung provider, the second check must not wait for a second fetch."""
    settings = settings_for(idp, tmp_path, oidc_fetch_timeout_seconds=1.0)
    fast, full = JWTAuthMiddleware(None, settings), JWTAuthMiddleware(None, settings)
    assert fast.verifier.provider is full.verifier.provider
    for mw in (fast, full):
        warm(mw.verifier.provider)
    idp.delay = 10
    token = idp.sign(idp.claims(), rsa_key, kid="rotated")
    started = time.monotonic()
    for mw in (fast, full):
        refused = check(mw, token)
        assert isinstance(refused, Refusal) and refused.status == 503
    assert time.monotonic() - started < 1.8  # one wait of 1 s, with room for a loaded machine


# --- settings --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"oidc_issuer": "http://sso.example.com"}, "https"),
        ({"oidc_issuer": "https://sso.example.com"}, "OIDC_AUDIENCE"),
        ({"oidc_issuer": "attrition-service", "oidc_audience": "a"}, "https"),
        ({"local_tokens": False}, "needs ATTRITION_OIDC_ISSUER"),
        ({"oidc_role_map": "hr"}, "provider_role=service_role"),
    ],
)
def test_unsafe_provider_settings_are_refused(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Settings(jwt_secret=SECRET, **values)


def test_role_map_forms(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATTRITION_OIDC_ROLE_MAP", "hr=predict, hr=history ,boss=admin")
    assert Settings().oidc_role_map == {"hr": ["predict", "history"], "boss": ["admin"]}
    monkeypatch.setenv("ATTRITION_OIDC_ROLE_MAP", '{"hr": ["predict"]}')
    assert Settings().oidc_role_map == {"hr": ["predict"]}


def test_subject_prefix_must_not_look_like_a_username(idp: JWKSServer, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="could start a local username"):
        ProviderVerifier(settings_for(idp, tmp_path, oidc_subject_prefix="sso-"))
    verifier = ProviderVerifier(settings_for(idp, tmp_path, oidc_subject_prefix="sso:"))
    assert verifier.prefix == "sso:"
