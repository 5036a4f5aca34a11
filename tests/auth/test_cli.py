"""python -m auth: users from the command line, passwords never in argv, tokens that verify."""

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from auth.__main__ import main as cli_main
from auth.tokens import Verifier
from settings import Settings, get_settings
from tests.conftest import TEST_SECRET, PostgresDatabases, app_settings, database_url
from tests.harness import auth_cli


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


def test_token_uses_the_development_secret_of_a_make_serve_server(tmp_path: Path) -> None:
    """`make serve` (dev mode) generated the secret; a shell without make's variables mints with
    it instead of failing (it failed with a bare AssertionError)."""
    data = tmp_path / "data"
    served = Settings(dev_mode=True, data_dir=data).secured()  # what the server did at start
    env = {"ATTRITION_DATA_DIR": str(data)}  # and the default database: SQLite in it
    assert (
        cli(env, "create-user", "svc", "--role", "predict", stdin="s3cret-pass\n").returncode == 0
    )
    token = cli(env, "token", "svc")
    assert token.returncode == 0, token.stderr
    assert Verifier(served).decode(token.stdout.strip()).sub == "svc"


ONE_LINE_ERRORS = {
    "unknown_user": ({}, ("token", "nobody"), "no active user"),
    "disable_unknown_user": ({}, ("disable-user", "nobody"), "no user"),
    "delete_unknown_user": ({}, ("delete-user", "nobody"), "no user"),
    "revoke_unknown_user": ({}, ("revoke-tokens", "nobody"), "no user"),
    "bad_role": ({}, ("create-user", "x", "--role", "root"), "invalid choice"),
    "bad_duration": ({}, ("token", "x", "--ttl", "soon"), "not a duration"),
    "unknown_command": ({}, ("frobnicate",), "invalid choice"),
    "missing_argument": ({}, ("token",), "required"),
    "name_with_a_space": ({}, ("create-user", "a b", "--role", "predict"), "username"),
    "name_with_nul": ({}, ("create-user", "a\x01b", "--role", "predict"), "username"),
    "short_password": ({"stdin": "short\n"}, ("create-user", "y", "--role", "predict"), "password"),
    "bad_setting": (
        {"ATTRITION_LOGIN_MAX_FAILURES": "many"},
        ("list-users",),
        "ATTRITION_LOGIN_MAX_FAILURES",
    ),
    "database_unreachable": (
        {"ATTRITION_DATABASE_URL": "postgresql+psycopg://postgres:hunter2@127.0.0.1:9/x"},
        ("list-users",),
        "database postgresql+psycopg://postgres:***@127.0.0.1:9/x",
    ),
    "database_url_unparsable": ({"ATTRITION_DATABASE_URL": "not a url"}, ("list-users",), "url"),
    "no_secret_at_all": ({"ATTRITION_JWT_SECRET": None}, ("token", "x"), "ATTRITION_JWT_SECRET"),
    "weak_secret": ({"ATTRITION_JWT_SECRET": "short"}, ("token", "x"), "at least 32 bytes"),
}


@pytest.mark.parametrize("case", ONE_LINE_ERRORS, ids=list(ONE_LINE_ERRORS))
def test_every_failure_is_one_line_and_exit_code_2(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """In-process (a subprocess per case took minutes); main() is what `python -m auth` runs."""
    overrides, args, words = ONE_LINE_ERRORS[case]
    # SQLite in a fresh data folder: no development secret to fall back on.
    env = {"ATTRITION_JWT_SECRET": TEST_SECRET, "ATTRITION_DATA_DIR": str(tmp_path)}
    env.update({k: v for k, v in overrides.items() if k != "stdin"})
    for key in [k for k in os.environ if k.startswith("ATTRITION_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        if value is not None:
            monkeypatch.setenv(key, value)
    monkeypatch.setattr(sys, "stdin", io.StringIO(str(overrides.get("stdin", "s3cret-pass\n"))))
    get_settings.cache_clear()
    try:
        with pytest.raises(SystemExit) as exited:
            cli_main(list(args))
    finally:
        get_settings.cache_clear()
    err = capsys.readouterr().err
    assert exited.value.code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert words.lower() in err.lower(), err
    assert "hunter2" not in err
