"""Token minting and verification for HS256, RS256 and ES256, including key confusion."""

import hashlib
import hmac
import json
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from auth.tokens import TokenError, Verifier, create_token
from settings import Settings

SECRET = "s" * 48


def pem_pair(key, tmp_path: Path, name: str) -> tuple[Path, Path]:  # type: ignore[no-untyped-def]
    private = tmp_path / f"{name}.key"
    public = tmp_path / f"{name}.pub"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public


@pytest.fixture(params=["RS256", "ES256"])
def asymmetric(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    key = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if request.param == "RS256"
        else ec.generate_private_key(ec.SECP256R1())
    )
    private, public = pem_pair(key, tmp_path, request.param)
    return Settings(
        jwt_algorithm=request.param, jwt_public_key_file=public, jwt_private_key_file=private
    ).secured()


def test_hs256_round_trip() -> None:
    settings = Settings(jwt_secret=SECRET).secured()
    claims = Verifier(settings).decode(create_token(settings, subject="amy", roles=["predict"]))
    assert claims.sub == "amy" and claims.roles == ("predict",)
    assert claims.raw["iss"] == "attrition-service" and claims.raw["aud"] == "attrition-api"


def test_asymmetric_round_trip(asymmetric: Settings) -> None:
    token = create_token(asymmetric, subject="svc", roles=["predict"], ttl_seconds=60)
    assert Verifier(asymmetric).decode(token).sub == "svc"


def test_asymmetric_server_refuses_hs256_signed_with_its_public_key(asymmetric: Settings) -> None:
    assert asymmetric.jwt_public_key_file is not None
    public_pem = asymmetric.jwt_public_key_file.read_bytes()
    now = int(time.time())
    header = jwt.utils.base64url_encode(b'{"alg":"HS256","typ":"JWT"}')
    body = {
        "sub": "x",
        "iss": "attrition-service",
        "aud": "attrition-api",
        "iat": now,
        "exp": now + 60,
    }
    payload = jwt.utils.base64url_encode(json.dumps(body).encode())
    sig = jwt.utils.base64url_encode(
        hmac.new(public_pem, header + b"." + payload, hashlib.sha256).digest()
    )
    with pytest.raises(TokenError, match="not accepted"):
        Verifier(asymmetric).decode((header + b"." + payload + b"." + sig).decode())


def test_asymmetric_server_refuses_the_other_asymmetric_algorithm(
    asymmetric: Settings, tmp_path: Path
) -> None:
    other = "ES256" if asymmetric.jwt_algorithm == "RS256" else "RS256"
    key = (
        ec.generate_private_key(ec.SECP256R1())
        if other == "ES256"
        else rsa.generate_private_key(65537, 2048)
    )
    token = jwt.encode({"sub": "x"}, key, algorithm=other)
    with pytest.raises(TokenError, match="not accepted"):
        Verifier(asymmetric).decode(token)


def test_leeway_tolerates_small_clock_skew() -> None:
    settings = Settings(jwt_secret=SECRET, jwt_leeway_seconds=30).secured()
    now = int(time.time())
    base = {"sub": "a", "iss": settings.jwt_issuer, "aud": settings.jwt_audience}
    slightly_expired = jwt.encode({**base, "iat": now - 100, "exp": now - 10}, SECRET, "HS256")
    assert Verifier(settings).decode(slightly_expired).sub == "a"
    expired = jwt.encode({**base, "iat": now - 100, "exp": now - 60}, SECRET, "HS256")
    with pytest.raises(TokenError, match="expired"):
        Verifier(settings).decode(expired)


def test_a_cached_token_still_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(jwt_secret=SECRET, jwt_leeway_seconds=0).secured()
    verifier = Verifier(settings)
    token = create_token(settings, subject="amy", roles=["predict"], ttl_seconds=60)
    assert verifier.decode(token).sub == "amy"
    assert verifier.decode(token).sub == "amy"  # served from the cache
    later = time.time() + 120
    monkeypatch.setattr(time, "time", lambda: later)
    with pytest.raises(TokenError, match="expired"):
        verifier.decode(token)


def signed(
    payload: str, secret: str = SECRET, header: bytes = b'{"alg":"HS256","typ":"JWT"}'
) -> str:
    """A token with a hand-written payload (PyJWT would coerce or refuse the odd values)."""
    head = jwt.utils.base64url_encode(header)
    body = jwt.utils.base64url_encode(payload.encode())
    sig = hmac.new(secret.encode(), head + b"." + body, hashlib.sha256).digest()
    return (head + b"." + body + b"." + jwt.utils.base64url_encode(sig)).decode()


def payload(**fields: str) -> str:
    """JSON with valid claims, each overridable by its raw JSON text."""
    now = int(time.time())
    raw = {
        "sub": '"amy"',
        "iss": '"attrition-service"',
        "aud": '"attrition-api"',
        "iat": str(now),
        "nbf": str(now),
        "exp": str(now + 600),
        **fields,
    }
    return "{" + ", ".join(f'"{k}": {v}' for k, v in raw.items()) + "}"


# Every time claim, every way of not being a JSON number that PyJWT lets through or refuses.
NOT_NUMBERS = ['"{t}"', '"{t}.5"', "true", "false", "[{t}]", '{{"t": {t}}}', "NaN", "Infinity"]
TIME_CASES = [(claim, bad) for claim in ("exp", "iat", "nbf") for bad in NOT_NUMBERS]


@pytest.mark.parametrize(("claim", "bad"), TIME_CASES, ids=[f"{c}-{b}" for c, b in TIME_CASES])
def test_time_claims_must_be_json_numbers(claim: str, bad: str) -> None:
    settings = Settings(jwt_secret=SECRET).secured()
    verifier = Verifier(settings)
    value = int(time.time()) + (600 if claim == "exp" else -10)
    token = signed(payload(**{claim: bad.format(t=value)}))
    for _ in range(3):  # the same answer every time: nothing half-accepted stays in the cache
        with pytest.raises(TokenError):
            verifier.decode(token)


def test_fractional_time_claims_are_numbers_too() -> None:
    settings = Settings(jwt_secret=SECRET).secured()
    now = time.time()
    token = signed(payload(iat=str(now), nbf=str(now), exp=str(now + 600.5)))
    verifier = Verifier(settings)
    assert verifier.decode(token).exp == pytest.approx(now + 600.5)
    assert verifier.decode(token).sub == "amy"  # the cached path


BAD_SUBJECTS = {
    "empty": '""',
    "number": "42",
    "list": '["amy"]',
    "object": '{"name": "amy"}',
    "null": "null",
    "nul": '"amy\\u0000"',
    "control": '"a\\u0001b"',
    "newline": '"amy\\nadmin"',
    "delete": '"a\\u007fb"',
    "c1_control": '"a\\u0085b"',
    "lone_high_surrogate": '"a\\ud800b"',
    "lone_low_surrogate": '"\\udc00"',
    "too_long": '"' + "a" * 256 + '"',
}


@pytest.mark.parametrize("case", BAD_SUBJECTS, ids=list(BAD_SUBJECTS))
def test_subject_must_be_a_plain_bounded_string(case: str) -> None:
    settings = Settings(jwt_secret=SECRET).secured()
    with pytest.raises(TokenError, match="'sub'"):
        Verifier(settings).decode(signed(payload(sub=BAD_SUBJECTS[case])))


def test_longest_allowed_subject_is_accepted() -> None:
    settings = Settings(jwt_secret=SECRET).secured()
    assert Verifier(settings).decode(signed(payload(sub='"' + "a" * 255 + '"'))).sub == "a" * 255


HOSTILE_ALGS = ['"HS256\\" , error=\\"x"', '"' + "A" * 5000 + '"', '["HS256"]', '"none"', "null"]


@pytest.mark.parametrize("alg", HOSTILE_ALGS, ids=["quotes", "long", "list", "none", "null"])
def test_error_messages_never_carry_token_content(alg: str) -> None:
    settings = Settings(jwt_secret=SECRET).secured()
    token = signed(payload(), header=('{"alg": ' + alg + ', "typ": "JWT"}').encode())
    with pytest.raises(TokenError) as refused:
        Verifier(settings).decode(token)
    message = str(refused.value)
    assert len(message) < 80 and '"' not in message and "AAAA" not in message, message
