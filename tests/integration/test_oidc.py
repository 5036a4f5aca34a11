"""Tokens from a real OpenID provider (oidc-provider on Node.js, started here) at a real
`bentoml serve`: client credentials, roles from a nested claim, the history's owner and its
erasure, another issuer, another audience, alg confusion between the provider's keys, key
rotation, the provider stopped or hung mid-run, and a first start with the provider down."""

import hashlib
import hmac
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from loadtests.oidc_provider import (
    RESOURCE,
    Client,
    OpenIDProvider,
    private_key,
    signing_key,
)
from tests.conftest import PASSWORD, SERVER_ENV, PostgresDatabases, seed_users
from tests.harness import Server, free_port
from tests.helpers import PROJECT_DIR, employee_rows

pytestmark = pytest.mark.integration

ROLE_MAP = {"attrition-hr": ["predict", "history", "outcomes"], "attrition-reader": ["history"]}
# Short enough for a test to see a withdrawn key stop; the bounds below are generous for a
# loaded 2-core machine.
MAX_AGE, COOLDOWN, FETCH_TIMEOUT = 3, 2, 2
PREDICT, BATCH, HISTORY = "/predict/attrition", "/predict/attrition/batch", "/predict/history"


def keycloak_roles(*roles: str) -> dict[str, Any]:
    return {"realm_access": {"roles": list(roles)}}


CLIENTS = [
    Client("hr-app", claims=keycloak_roles("attrition-hr", "offline_access")),
    Client("reporting", claims=keycloak_roles("attrition-reader")),
    Client("ec-app", alg="ES256", claims=keycloak_roles("attrition-hr")),
]


@pytest.fixture(scope="module")
def keys() -> dict[str, dict[str, Any]]:
    return {
        "A": signing_key("RS256", "rsa-a"),
        "B": signing_key("RS256", "rsa-b"),
        "E": signing_key("ES256", "ec-e", publish_alg=False),  # as Entra ID publishes keys
    }


@pytest.fixture(scope="module")
def provider(
    keys: dict[str, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OpenIDProvider]:
    idp = OpenIDProvider(
        tmp_path_factory.mktemp("idp"), keys=[keys["A"], keys["E"]], clients=CLIENTS
    )
    yield idp
    idp.stop()


@pytest.fixture(scope="module")
def served(
    provider: OpenIDProvider,
    model_tag: str,
    postgres: PostgresDatabases,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Server, dict[str, str]]]:
    """The service trusting the provider, with local users too; and its environment."""
    work = tmp_path_factory.mktemp("oidc-served")
    url = postgres.create()
    seed_users(url)
    env = {
        **SERVER_ENV,
        "ATTRITION_MODEL_TAG": model_tag,
        "ATTRITION_DATABASE_URL": url,
        "ATTRITION_DATA_DIR": str(work / "data"),
        **provider.service_env(
            ATTRITION_OIDC_ROLES_CLAIM="realm_access.roles",
            ATTRITION_OIDC_ROLE_MAP=json.dumps(ROLE_MAP),
            ATTRITION_OIDC_JWKS_MAX_AGE_SECONDS=str(MAX_AGE),
            ATTRITION_OIDC_REFRESH_COOLDOWN_SECONDS=str(COOLDOWN),
            ATTRITION_OIDC_FETCH_TIMEOUT_SECONDS=str(FETCH_TIMEOUT),
        ),
    }
    server = Server("service:AttritionService", env, log=work / "serve.log")
    yield server, env
    server.stop()


@pytest.fixture(scope="module")
def server(served: tuple[Server, dict[str, str]]) -> Server:
    return served[0]


@pytest.fixture(scope="module")
def employee() -> dict[str, Any]:
    return employee_rows(1)[0]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def predict(server: Server, token: str, employee: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{server.url}{PREDICT}", json=employee, headers=bearer(token), timeout=30)


def detail(response: httpx.Response) -> str:
    return str(response.json()["detail"][0]["msg"])


def history(server: Server, token: str, **params: Any) -> list[dict[str, Any]]:
    response = httpx.get(f"{server.url}{HISTORY}", params=params, headers=bearer(token), timeout=30)
    assert response.status_code == 200, response.text
    return list(response.json()["items"])


def wait_for_rows(server: Server, token: str, count: int, **params: Any) -> list[dict[str, Any]]:
    """The history once the inference log's writer has copied `count` rows (it is asynchronous)."""
    deadline = time.monotonic() + 30
    while len(items := history(server, token, **params)) < count:
        assert time.monotonic() < deadline, f"{len(items)} of {count} rows after 30 s"
        time.sleep(0.2)
    return items


def local_token(server: Server, user: str) -> str:
    response = httpx.post(
        f"{server.url}/auth/token", data={"username": user, "password": PASSWORD}, timeout=60
    )
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def test_client_credentials_token_predicts_and_owns_its_history(
    server: Server, provider: OpenIDProvider, employee: dict[str, Any]
) -> None:
    token = provider.token("hr-app")
    single = predict(server, token, employee)  # the fast path
    assert single.status_code == 200, single.text
    batch = httpx.post(
        f"{server.url}{BATCH}", json={"employees": [employee] * 2}, headers=bearer(token)
    )
    assert batch.status_code == 200, batch.text
    owner = f"{provider.issuer}#hr-app"
    items = wait_for_rows(server, token, 3)
    assert {i["subject"] for i in items} == {owner}
    assert single.json()["request_id"] in {i["id"] for i in items}
    # A local user with the history role sees none of it; a local admin can ask for it.
    assert history(server, local_token(server, "historian")) == []
    admin = local_token(server, "admin")
    assert len(history(server, admin, subject=owner)) == 3


def test_roles_come_from_the_mapped_claim(server: Server, provider: OpenIDProvider,
                                          employee: dict[str, Any]) -> None:  # fmt: skip
    reader = provider.token("reporting")
    refused = predict(server, reader, employee)
    assert refused.status_code == 403 and "predict" in detail(refused)
    assert history(server, reader) == []  # history is allowed, and it has none of its own


def test_es256_key_published_without_alg(
    server: Server, provider: OpenIDProvider, employee: dict[str, Any]
) -> None:
    token = provider.token("ec-app")
    assert jwt.get_unverified_header(token)["alg"] == "ES256"
    assert predict(server, token, employee).status_code == 200


def test_local_users_and_the_password_grant_still_work(
    server: Server, employee: dict[str, Any]
) -> None:
    token = local_token(server, "predictor")
    assert predict(server, token, employee).status_code == 200


def test_token_from_another_issuer_is_refused(
    server: Server, provider: OpenIDProvider, keys: dict[str, dict[str, Any]],
    employee: dict[str, Any], tmp_path: Path,
) -> None:  # fmt: skip
    # A real provider of its own, even with the same kid as ours.
    foreign_key = {**signing_key("RS256"), "kid": keys["A"]["kid"]}
    other = OpenIDProvider(tmp_path / "other", keys=[foreign_key], clients=CLIENTS)
    try:
        refused = predict(server, other.token("hr-app"), employee)
    finally:
        other.stop()
    assert refused.status_code == 401 and detail(refused) == "wrong issuer"
    # The same foreign key claiming our issuer: the signature does not match our key A.
    claims = jwt.decode(provider.token("hr-app"), options={"verify_signature": False})
    forged = jwt.encode(
        claims, private_key(foreign_key), algorithm="RS256", headers={"kid": keys["A"]["kid"]}
    )
    refused = predict(server, forged, employee)
    assert refused.status_code == 401 and detail(refused) == "bad signature"


def test_token_for_another_audience_is_refused(
    server: Server, provider: OpenIDProvider, employee: dict[str, Any]
) -> None:
    token = provider.token("hr-app", resource="https://payroll.example.com/api")
    assert jwt.decode(token, options={"verify_signature": False})["aud"] != RESOURCE
    refused = predict(server, token, employee)
    assert refused.status_code == 401 and detail(refused) == "wrong audience"


def forge(header: dict[str, Any], claims: dict[str, Any], sign: Any) -> str:
    head = jwt.utils.base64url_encode(json.dumps(header).encode())
    body = jwt.utils.base64url_encode(json.dumps(claims).encode())
    signature = sign(head + b"." + body)
    return (head + b"." + body + b"." + jwt.utils.base64url_encode(signature)).decode()


def test_alg_confusion_between_the_providers_keys_is_refused(
    server: Server, provider: OpenIDProvider, keys: dict[str, dict[str, Any]],
    employee: dict[str, Any],
) -> None:  # fmt: skip
    claims = jwt.decode(provider.token("hr-app"), options={"verify_signature": False})
    jwks_uri = provider.http.get(f"{provider.issuer}/.well-known/openid-configuration").json()
    published = {k["kid"]: k for k in provider.http.get(jwks_uri["jwks_uri"]).json()["keys"]}
    rsa_public = jwt.PyJWK(published["rsa-a"]).key
    pem = rsa_public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    hmac_with = lambda secret: lambda data: hmac.new(secret, data, hashlib.sha256).digest()  # noqa: E731
    ec_private, rsa_private = private_key(keys["E"]), private_key(keys["A"])
    attempts = {
        # HS256 with the RSA public key (PEM, or its published JWK) as the HMAC secret
        "hs256_pem": forge({"alg": "HS256", "kid": "rsa-a"}, claims, hmac_with(pem)),
        "hs256_jwk": forge(
            {"alg": "HS256", "kid": "rsa-a"},
            claims,
            hmac_with(json.dumps(published["rsa-a"]).encode()),
        ),
        "none": forge({"alg": "none", "kid": "rsa-a"}, claims, lambda data: b""),
        # an EC signature under the RSA key's kid, an RSA one under the EC key's
        "es256_as_rsa": jwt.encode(claims, ec_private, "ES256", headers={"kid": "rsa-a"}),
        "rs256_as_ec": jwt.encode(claims, rsa_private, "RS256", headers={"kid": "ec-e"}),
        # the RSA key's own signature, but PS256 where the key is pinned to RS256
        "ps256_as_rs256": jwt.encode(claims, rsa_private, "PS256", headers={"kid": "rsa-a"}),
    }
    for name, token in attempts.items():
        refused = predict(server, token, employee)
        assert refused.status_code == 401, (name, refused.text)
        assert "algorithm" in detail(refused), (name, detail(refused))
    assert predict(server, jwt.encode(claims, rsa_private, "RS256", headers={"kid": "rsa-a"}),
                   employee).status_code == 200  # fmt: skip


def test_erasure_by_the_qualified_subject(
    served: tuple[Server, dict[str, str]], provider: OpenIDProvider, employee: dict[str, Any]
) -> None:
    server, env = served
    token = provider.token("ec-app")
    for _ in range(2):
        assert predict(server, token, employee).status_code == 200
    owner = f"{provider.issuer}#ec-app"
    wait_for_rows(server, token, 3)  # one from the ES256 test before
    erased = subprocess.run(
        [sys.executable, "-m", "persistence", "erase", "--subject", owner, "--reason", "test"],
        env={**env, "PATH": str(Path(sys.executable).parent)},
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert erased.returncode == 0, erased.stderr
    assert "deleted 3 predictions" in erased.stdout
    assert history(server, token) == []
    assert history(server, provider.token("hr-app"))  # another subject's rows stay


def test_key_rotation_without_an_outage(
    server: Server, provider: OpenIDProvider, keys: dict[str, dict[str, Any]],
    employee: dict[str, Any],
) -> None:  # fmt: skip
    old = provider.token("hr-app")
    assert jwt.get_unverified_header(old)["kid"] == "rsa-a"
    assert predict(server, old, employee).status_code == 200
    provider.rotate([keys["B"], keys["A"], keys["E"]])  # B published and signing at once
    new = provider.token("hr-app")
    assert jwt.get_unverified_header(new)["kid"] == "rsa-b"
    for _ in range(4):  # both entry workers meet kid B for the first time
        assert predict(server, new, employee).status_code == 200
        assert predict(server, old, employee).status_code == 200  # A still published
    provider.rotate([keys["B"], keys["E"]])  # A withdrawn
    deadline = time.monotonic() + MAX_AGE + 30
    refusals = 0
    while refusals < 4:  # several in a row: every worker has dropped A
        response = predict(server, old, employee)
        refusals = refusals + 1 if response.status_code == 401 else 0
        assert time.monotonic() < deadline, "tokens of a withdrawn key still accepted"
        time.sleep(0.2)
    assert detail(response) == "unknown signing key"
    assert predict(server, new, employee).status_code == 200


def test_provider_stopped_or_hung_mid_run(
    server: Server, provider: OpenIDProvider, employee: dict[str, Any]
) -> None:
    token = provider.token("hr-app")
    assert predict(server, token, employee).status_code == 200
    unknown_key = signing_key("RS256", "published-while-down")
    claims = jwt.decode(token, options={"verify_signature": False})
    unknown = jwt.encode(
        claims, private_key(unknown_key), "RS256", headers={"kid": "published-while-down"}
    )
    for trouble in ("stopped", "hung"):
        if trouble == "stopped":
            provider.stop()
        else:
            provider.restart()
            provider.proc.send_signal(signal.SIGSTOP)  # accepts connections, never answers
        try:
            time.sleep(MAX_AGE + 1)  # the cached keys are old now; every refresh fails
            for _ in range(10):  # valid tokens keep working from the cached keys
                assert predict(server, token, employee).status_code == 200
            time.sleep(COOLDOWN + 0.5)
            started = time.monotonic()
            refused = predict(server, unknown, employee)
            waited = time.monotonic() - started
            assert refused.status_code == 503, (trouble, refused.text)
            assert int(refused.headers["retry-after"]) >= 1
            assert waited < FETCH_TIMEOUT + 8, (trouble, waited)  # the bound, and room
        finally:
            if trouble == "hung":
                provider.proc.send_signal(signal.SIGCONT)
    assert predict(server, provider.token("hr-app"), employee).status_code == 200


def test_first_start_with_the_provider_down_fails_clearly(model_tag: str, tmp_path: Path) -> None:
    issuer = f"https://127.0.0.1:{free_port()}"  # nothing listens there
    env = {
        **SERVER_ENV,
        "ATTRITION_MODEL_TAG": model_tag,
        "ATTRITION_DATA_DIR": str(tmp_path / "data"),
        "ATTRITION_OIDC_ISSUER": issuer,
        "ATTRITION_OIDC_AUDIENCE": RESOURCE,
        "ATTRITION_OIDC_FETCH_TIMEOUT_SECONDS": "2",
    }
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="server exited") as failed:
        Server("service:AttritionService", env, log=tmp_path / "serve.log", attempts=1)
    assert time.monotonic() - started < 90
    lines = [ln for ln in str(failed.value).splitlines() if ln.startswith("cannot start:")]
    assert len(lines) == 1, str(failed.value)
    assert f"identity provider {issuer} unreachable" in lines[0]
    assert "ATTRITION_OIDC_ISSUER" in lines[0]
