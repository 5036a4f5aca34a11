"""python -m auth: users from the command line, passwords never in argv, tokens that verify."""

import subprocess
from pathlib import Path

import pytest

from auth.tokens import Verifier
from loadtests.harness import auth_cli
from tests.conftest import TEST_SECRET, PostgresDatabases, app_settings, database_url


@pytest.fixture(params=["sqlite", "postgresql"])
def env(
    request: pytest.FixtureRequest, postgres: PostgresDatabases, tmp_path: Path
) -> dict[str, str]:
    return {
        "ATTRITION_DATABASE_URL": database_url(request.param, postgres, tmp_path),
        "ATTRITION_JWT_SECRET": TEST_SECRET,
        "ATTRITION_DATA_DIR": str(tmp_path / "data"),
    }


def cli(env: dict[str, str], *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return auth_cli(env, *args, stdin=stdin)


def test_user_lifecycle_and_service_token(env: dict[str, str], tmp_path: Path) -> None:
    made = cli(
        env, "create-user", "svc", "--role", "predict", "--role", "history", stdin="s3cret-pass\n"
    )
    assert made.returncode == 0, made.stderr
    assert "svc" in cli(env, "list-users").stdout
    token = cli(env, "token", "svc", "--ttl", "30m")
    assert token.returncode == 0, token.stderr
    settings = app_settings(env["ATTRITION_DATABASE_URL"], tmp_path / "data")
    claims = Verifier(settings).decode(token.stdout.strip())
    assert claims.sub == "svc" and set(claims.roles) == {"predict", "history"}
    assert 1790 <= claims.raw["exp"] - claims.raw["iat"] <= 1800

    assert cli(env, "disable-user", "svc").returncode == 0
    refused = cli(env, "token", "svc")
    assert refused.returncode == 2 and "no active user" in refused.stderr


def test_bad_input_is_refused_with_a_message(env: dict[str, str]) -> None:
    assert cli(env, "create-user", "x", "--role", "root", stdin="s3cret-pass\n").returncode == 2
    short = cli(env, "create-user", "y", "--role", "predict", stdin="short\n")
    assert short.returncode == 2 and "password" in short.stderr
    cli(env, "create-user", "z", "--role", "predict", stdin="s3cret-pass\n")
    dup = cli(env, "create-user", "z", "--role", "predict", stdin="s3cret-pass\n")
    assert dup.returncode == 2 and "already exists" in dup.stderr
    assert cli(env, "token", "z", "--ttl", "soon").returncode == 2
