"""JWT auth against a real server on SQLite and PostgreSQL: bad tokens, roles, login, public routes."""

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from sqlmodel import Session

from auth.tokens import create_token
from auth.users import create_user, delete_user, revoke_tokens, set_active
from persistence.db import make_engine
from persistence.models import UserCreate
from tests.conftest import PASSWORD, TEST_SECRET, Stack
from tests.helpers import CHALLENGE, employee_rows

pytestmark = pytest.mark.integration

ISS, AUD = "attrition-service", "attrition-api"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
PUBLIC_PEM = RSA_KEY.public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
)


def claims(**overrides: Any) -> dict[str, Any]:
    now = datetime.now(UTC)
    base = {
        "sub": "predictor",
        "roles": ["predict"],
        "iss": ISS,
        "aud": AUD,
        "iat": now,
        "exp": now + timedelta(minutes=5),
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def hs256(**overrides: Any) -> str:
    return jwt.encode(claims(**overrides), TEST_SECRET, algorithm="HS256")


def unsigned() -> str:
    return jwt.encode(claims(), None, algorithm="none")


def tamper_payload() -> str:
    head, _, sig = hs256().split(".")
    forged = jwt.utils.base64url_encode(
        json.dumps(
            claims(sub="admin", roles=["admin"]), default=lambda d: int(d.timestamp())
        ).encode()
    ).decode()
    return f"{head}.{forged}.{sig}"


def tamper_signature() -> str:
    token = hs256()
    flipped = "A" if token[-2] != "A" else "B"
    return token[:-2] + flipped + token[-1]


def hs256_with_public_key_as_secret() -> str:
    # The classic RS/HS key confusion: sign HS256 with the (public) PEM bytes as the secret.
    import hashlib
    import hmac

    # PyJWT itself refuses a PEM as an HMAC key, so the token is assembled by hand.
    header = jwt.utils.base64url_encode(b'{"alg":"HS256","typ":"JWT"}')
    now = int(time.time())
    payload = jwt.utils.base64url_encode(
        json.dumps({**claims(), "iat": now, "exp": now + 300}).encode()
    )
    signing = header + b"." + payload
    sig = jwt.utils.base64url_encode(hmac.new(PUBLIC_PEM, signing, hashlib.sha256).digest())
    return (signing + b"." + sig).decode()


def raw_hs256(**fields: str) -> str:
    """HS256 over a hand-written payload: each field's raw JSON (PyJWT would coerce the odd ones)."""
    now = int(time.time())
    raw = {"sub": '"predictor"', "roles": '["predict"]', "iss": f'"{ISS}"', "aud": f'"{AUD}"',
           "iat": str(now), "exp": str(now + 300), **fields}  # fmt: skip
    return signed_raw("{" + ", ".join(f'"{k}": {v}' for k, v in raw.items()) + "}")


def signed_raw(payload: str, header: str = '{"alg":"HS256","typ":"JWT"}') -> str:
    import hashlib
    import hmac

    signing = (
        jwt.utils.base64url_encode(header.encode())
        + b"."
        + jwt.utils.base64url_encode(payload.encode())
    )
    sig = hmac.new(TEST_SECRET.encode(), signing, hashlib.sha256).digest()
    return (signing + b"." + jwt.utils.base64url_encode(sig)).decode()


def later(seconds: int) -> str:
    return str(int(time.time()) + seconds)


HOUR = timedelta(hours=1)
# Every time claim as a numeric string, a boolean, an array.
NOT_NUMBER_TIMES: dict[str, Callable[[], str | None]] = {
    f"{claim}_{kind}": (
        lambda claim=claim, make=make: "Bearer " + raw_hs256(**{claim: make(claim)})
    )
    for claim in ("exp", "iat", "nbf")
    for kind, make in {
        "numeric_string": lambda c: f'"{later(300 if c == "exp" else -5)}"',
        "boolean": lambda c: "true",
        "array": lambda c: f"[{later(300 if c == 'exp' else -5)}]",
    }.items()
}
# Every kind of subject that cannot name a user: the middleware must never reach the database
# with it (a NUL made PostgreSQL fail, which was taken for an outage and trusted the token).
BAD_SUBJECTS: dict[str, Callable[[], str | None]] = {
    f"sub_{kind}": (lambda sub=sub: "Bearer " + raw_hs256(sub=sub, roles='["admin"]'))
    for kind, sub in {
        "empty": '""',
        "nul": '"admin\\u0000"',
        "control": '"adm\\u0001in"',
        "newline": '"admin\\n"',
        "c1_control": '"admin\\u0085"',
        "lone_surrogate": '"admin\\ud800"',
        "too_long": '"' + "a" * 300 + '"',
        "list": '["admin"]',
    }.items()
}
BAD_TOKENS: dict[str, Callable[[], str | None]] = {
    "no_authorization_header": lambda: None,
    "basic_scheme": lambda: "Basic " + hs256(),
    "bearer_without_token": lambda: "Bearer",
    "not_a_jwt": lambda: "Bearer not-a-jwt",
    "alg_none_unsigned": lambda: "Bearer " + unsigned(),
    "alg_hs512_not_on_allowlist": lambda: (
        "Bearer " + jwt.encode(claims(), TEST_SECRET, algorithm="HS512")
    ),
    "alg_rs256_to_hs256_server": lambda: (
        "Bearer " + jwt.encode(claims(), RSA_KEY, algorithm="RS256")
    ),
    "alg_es256_to_hs256_server": lambda: (
        "Bearer " + jwt.encode(claims(), EC_KEY, algorithm="ES256")
    ),
    "hs256_signed_with_public_key_pem": lambda: "Bearer " + hs256_with_public_key_as_secret(),
    "wrong_secret": lambda: "Bearer " + jwt.encode(claims(), "another-secret-" + "y" * 40, "HS256"),
    "tampered_payload": lambda: "Bearer " + tamper_payload(),
    "tampered_signature": lambda: "Bearer " + tamper_signature(),
    "expired": lambda: (
        "Bearer " + hs256(iat=datetime.now(UTC) - 2 * HOUR, exp=datetime.now(UTC) - HOUR)
    ),
    "not_yet_valid_nbf": lambda: "Bearer " + hs256(nbf=datetime.now(UTC) + HOUR),
    "issued_in_the_future": lambda: "Bearer " + hs256(iat=datetime.now(UTC) + HOUR),
    "wrong_issuer": lambda: "Bearer " + hs256(iss="someone-else"),
    "wrong_audience": lambda: "Bearer " + hs256(aud="another-api"),
    "missing_sub": lambda: "Bearer " + hs256(sub=None),
    "missing_exp": lambda: "Bearer " + hs256(exp=None),
    "missing_iat": lambda: "Bearer " + hs256(iat=None),
    "missing_aud": lambda: "Bearer " + hs256(aud=None),
    "sub_not_a_string": lambda: "Bearer " + hs256(sub=42),
    "roles_not_a_list": lambda: "Bearer " + hs256(roles="admin"),
    "unknown_user": lambda: "Bearer " + hs256(sub="ghost"),
    "disabled_user": lambda: "Bearer " + hs256(sub="retired"),
    "two_tokens": lambda: "Bearer " + hs256() + " " + hs256(),
    # Over ATTRITION_MAX_TOKEN_BYTES (8 KiB), under the 32 KiB header limit (431, tested apart).
    "oversized_but_signed": lambda: "Bearer " + hs256(padding="p" * 12_000),
    "alg_with_quotes": lambda: "Bearer " + signed_raw(raw_payload(), '{"alg":"HS256\\", x=\\"y"}'),
    "alg_very_long": lambda: "Bearer " + signed_raw(raw_payload(), '{"alg":"' + "A" * 3000 + '"}'),
    **NOT_NUMBER_TIMES,
    **BAD_SUBJECTS,
}


def raw_payload() -> str:
    now = int(time.time())
    return json.dumps(
        {
            "sub": "predictor",
            "roles": ["predict"],
            "iss": ISS,
            "aud": AUD,
            "iat": now,
            "exp": now + 300,
        }
    )


def predict(
    stack: Stack, authorization: str | None, path: str = "/predict/attrition"
) -> httpx.Response:
    headers = {"Authorization": authorization} if authorization is not None else {}
    return httpx.post(
        f"{stack.server.url}{path}", json=employee_rows(1)[0], headers=headers, timeout=30
    )


def test_a_good_token_is_accepted(backend_stack: Stack) -> None:
    r = predict(backend_stack, "Bearer " + hs256())
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("case", BAD_TOKENS, ids=list(BAD_TOKENS))
def test_bad_token_is_a_401(backend_stack: Stack, case: str) -> None:
    authorization = BAD_TOKENS[case]()
    for _ in range(2):  # the second use goes through the worker's verified-token cache, if any
        r = predict(backend_stack, authorization)
        assert r.status_code == 401, r.text
        assert CHALLENGE.fullmatch(r.headers["www-authenticate"]), r.headers["www-authenticate"]
        assert r.json()["detail"][0]["loc"] == ["header", "Authorization"]


@pytest.mark.parametrize("case", list(BAD_SUBJECTS), ids=list(BAD_SUBJECTS))
def test_a_subject_no_user_can_have_gets_no_admin_access(backend_stack: Stack, case: str) -> None:
    r = httpx.get(
        f"{backend_stack.server.url}/predict/history",
        headers={"Authorization": BAD_SUBJECTS[case]() or ""},
        timeout=30,
    )
    assert r.status_code == 401, r.text


def test_two_authorization_headers_are_refused(backend_stack: Stack) -> None:
    good = "Bearer " + hs256()
    for pair in ([good, good], [good, "Bearer " + hs256(sub="admin", roles=["admin"])]):
        r = httpx.post(
            f"{backend_stack.server.url}/predict/attrition",
            json=employee_rows(1)[0],
            headers=[("Authorization", value) for value in pair],
            timeout=30,
        )
        assert r.status_code == 401, r.text
        assert "more than one" in r.json()["detail"][0]["msg"]


ROUTES = {
    "predict": ("POST", "/predict/attrition"),
    "predict_batch": ("POST", "/predict/attrition/batch"),
    "model_card": ("GET", "/model"),
}
# role -> routes it may call; the others must be 403.
ALLOWED = {
    "predictor": {"predict", "predict_batch", "model_card"},
    "historian": {"model_card"},
    "analyst": {"predict", "predict_batch", "model_card"},
    "admin": {"predict", "predict_batch", "model_card"},
}


@pytest.mark.parametrize("user", ALLOWED)
@pytest.mark.parametrize("route", ROUTES)
def test_role_matrix(backend_stack: Stack, user: str, route: str) -> None:
    method, path = ROUTES[route]
    row = employee_rows(1)[0]
    body = {"employees": [row]} if route == "predict_batch" else row
    r = httpx.request(
        method,
        f"{backend_stack.server.url}{path}",
        json=body if method == "POST" else None,
        headers=backend_stack.headers(user),
        timeout=30,
    )
    if route in ALLOWED[user]:
        assert r.status_code == 200, r.text
    else:
        assert r.status_code == 403, r.text
        assert "predict" in r.json()["detail"][0]["msg"]


def test_a_token_cannot_claim_roles_the_user_lacks(backend_stack: Stack) -> None:
    forged_roles = "Bearer " + hs256(sub="historian", roles=["history", "predict", "admin"])
    assert predict(backend_stack, forged_roles).status_code == 403


@pytest.mark.parametrize(
    "path", ["/livez", "/readyz", "/healthz", "/health", "/metrics", "/docs.json", "/"]
)
def test_public_routes_need_no_token(backend_stack: Stack, path: str) -> None:
    assert httpx.get(f"{backend_stack.server.url}{path}", timeout=30).status_code == 200


def test_openapi_declares_bearer_auth_for_swagger(backend_stack: Stack) -> None:
    spec = httpx.get(f"{backend_stack.server.url}/docs.json", timeout=30).json()
    assert spec["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert spec["security"] == [{"bearerAuth": []}]
    assert "/auth/token" in spec["paths"]


def login(stack: Stack, username: str, password: str) -> httpx.Response:
    return httpx.post(
        f"{stack.server.url}/auth/token",
        data={"username": username, "password": password, "grant_type": "password"},
        timeout=30,
    )


def new_user(stack: Stack, roles: list[str]) -> str:
    name = f"u{uuid.uuid4().hex[:10]}"
    engine = make_engine(stack.url)
    with Session(engine) as session:
        create_user(
            session=session, user_in=UserCreate(username=name, roles=roles, password=PASSWORD)
        )
    engine.dispose()
    return name


def test_login_returns_a_working_token(backend_stack: Stack) -> None:
    name = new_user(backend_stack, ["predict"])
    r = login(backend_stack, name, PASSWORD)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["token_type"] == "bearer" and body["expires_in"] == 3600
    assert predict(backend_stack, "Bearer " + body["access_token"]).status_code == 200
    decoded = jwt.decode(body["access_token"], TEST_SECRET, ["HS256"], audience=AUD, issuer=ISS)
    assert decoded["sub"] == name and decoded["roles"] == ["predict"]


def test_unknown_user_and_wrong_password_look_the_same(backend_stack: Stack) -> None:
    name = new_user(backend_stack, ["predict"])
    wrong = login(backend_stack, name, "not the password")
    unknown = login(backend_stack, f"ghost{uuid.uuid4().hex[:6]}", "not the password")
    assert wrong.status_code == unknown.status_code == 400
    assert wrong.content == unknown.content
    assert wrong.json()["error"] == "invalid_grant"


def test_missing_form_field_is_a_400_naming_it(backend_stack: Stack) -> None:
    r = httpx.post(f"{backend_stack.server.url}/auth/token", data={"username": "x"}, timeout=30)
    assert r.status_code == 400
    assert r.json()["detail"][0]["loc"] == ["body", "password"]


def test_repeated_failures_lock_the_username(backend_stack: Stack) -> None:
    name = new_user(backend_stack, ["predict"])
    for _ in range(3):  # ATTRITION_LOGIN_MAX_FAILURES=3 in the test server
        assert login(backend_stack, name, "bad guess").status_code == 400
    locked = login(backend_stack, name, PASSWORD)  # even the right password waits
    assert locked.status_code == 429
    assert 0 < int(locked.headers["retry-after"]) <= 120


def test_unknown_usernames_lock_too(backend_stack: Stack) -> None:
    ghost = f"ghost{uuid.uuid4().hex[:6]}"
    statuses = [login(backend_stack, ghost, "guess").status_code for _ in range(4)]
    assert statuses == [400, 400, 400, 429]


def test_disabled_user_cannot_log_in_and_loses_access(backend_stack: Stack) -> None:
    name = new_user(backend_stack, ["predict"])
    token = login(backend_stack, name, PASSWORD).json()["access_token"]
    assert predict(backend_stack, "Bearer " + token).status_code == 200
    engine = make_engine(backend_stack.url)
    with Session(engine) as session:
        set_active(session=session, username=name, active=False)
    engine.dispose()
    assert predict(backend_stack, "Bearer " + token).status_code == 401
    assert login(backend_stack, name, PASSWORD).status_code == 400


MAX_FAILURES = 3  # ATTRITION_LOGIN_MAX_FAILURES of the test servers


async def wrong_burst_then_right(stack: Stack, name: str, size: int) -> tuple[list[int], int]:
    """`size` wrong passwords at once; the right one as soon as MAX_FAILURES wrong ones have
    been answered, while the rest of the burst may still be in flight."""
    limits = httpx.Limits(max_connections=size + 1)
    async with httpx.AsyncClient(base_url=stack.server.url, timeout=120, limits=limits) as client:

        async def attempt(password: str) -> int:
            form = {"username": name, "password": password, "grant_type": "password"}
            return (await client.post("/auth/token", data=form)).status_code

        tasks = [asyncio.create_task(attempt(f"wrong-{i}")) for i in range(size)]
        answered = 0
        for done in asyncio.as_completed(tasks):
            answered += await done == 400
            if answered == MAX_FAILURES:
                break
        right = await attempt(PASSWORD)
        return list(await asyncio.gather(*tasks)), right


@pytest.mark.parametrize("size", [10, 20])
def test_a_concurrent_burst_gets_exactly_the_allowed_guesses(
    backend_stack: Stack, size: int
) -> None:
    name = new_user(backend_stack, ["predict"])
    statuses, right = asyncio.run(wrong_burst_then_right(backend_stack, name, size))
    assert sorted(statuses) == [400] * MAX_FAILURES + [429] * (size - MAX_FAILURES), statuses
    assert right == 429  # the right password inside the burst, past the limit: no token


@pytest.mark.parametrize("size", [10, 20])
def test_concurrent_first_failures_for_a_new_name_are_no_500(
    backend_stack: Stack, size: int
) -> None:
    async def burst() -> list[int]:
        ghost = f"ghost{uuid.uuid4().hex[:8]}"
        async with httpx.AsyncClient(base_url=backend_stack.server.url, timeout=120) as client:
            form = {"username": ghost, "password": "guess"}
            answers = await asyncio.gather(
                *(client.post("/auth/token", data=form) for _ in range(size))
            )
            return [a.status_code for a in answers]

    statuses = asyncio.run(burst())
    assert statuses.count(400) == MAX_FAILURES and statuses.count(429) == size - MAX_FAILURES


def test_token_answers_are_never_cached(backend_stack: Stack) -> None:
    name = new_user(backend_stack, ["predict"])
    answers = [login(backend_stack, name, PASSWORD), login(backend_stack, name, "wrong")]
    answers.append(httpx.post(f"{backend_stack.server.url}/auth/token", data={"username": name}))
    for r in answers:
        assert r.headers["cache-control"] == "no-store", r.status_code
        assert r.headers["pragma"] == "no-cache"


@pytest.mark.parametrize(
    "form",
    [
        {"username": "x", "password": "s3cret-" + "p" * 1100},  # over the length limit
        {"username": "x", "password": "s3cret-password", "grant_type": "client_credentials"},
        {"username": "bad name\x00", "password": "s3cret-password"},
        {"password": "s3cret-password"},
    ],
    ids=["password_too_long", "wrong_grant_type", "bad_username", "missing_username"],
)
def test_a_refused_login_form_never_echoes_the_password(
    backend_stack: Stack, form: dict[str, str]
) -> None:
    r = httpx.post(f"{backend_stack.server.url}/auth/token", data=form, timeout=30)
    assert r.status_code == 400, r.text
    assert "s3cret" not in r.text
    assert r.json()["detail"][0]["loc"][0] == "body"


def edit_users(stack: Stack, change: Callable[[Session], Any]) -> None:
    engine = make_engine(stack.url)
    with Session(engine) as session:
        change(session)
    engine.dispose()


def test_revoking_a_users_tokens_ends_them(backend_stack: Stack) -> None:
    name = new_user(backend_stack, ["predict"])
    token = login(backend_stack, name, PASSWORD).json()["access_token"]
    assert predict(backend_stack, "Bearer " + token).status_code == 200
    edit_users(backend_stack, lambda s: revoke_tokens(session=s, username=name))
    assert predict(backend_stack, "Bearer " + token).status_code == 401
    fresh = login(backend_stack, name, PASSWORD).json()["access_token"]
    assert predict(backend_stack, "Bearer " + fresh).status_code == 200


def test_a_recreated_name_does_not_inherit_old_tokens(backend_stack: Stack) -> None:
    name = new_user(backend_stack, ["predict"])
    old = login(backend_stack, name, PASSWORD).json()["access_token"]
    minted = "Bearer " + create_token(backend_stack.settings, subject=name, roles=["predict"])
    assert predict(backend_stack, "Bearer " + old).status_code == 200
    edit_users(backend_stack, lambda s: delete_user(session=s, username=name))
    time.sleep(0.01)  # the new user's creation comes strictly after the old tokens' iat
    edit_users(
        backend_stack,
        lambda s: create_user(
            session=s, user_in=UserCreate(username=name, roles=["predict"], password=PASSWORD)
        ),
    )
    assert predict(backend_stack, "Bearer " + old).status_code == 401
    assert predict(backend_stack, minted).status_code == 401
    fresh = login(backend_stack, name, PASSWORD).json()["access_token"]
    assert predict(backend_stack, "Bearer " + fresh).status_code == 200
