"""The README's first steps as a new user runs them: `make serve` in one terminal (development
mode, SQLite in data/), the CLI and curl lines in another that has none of make's variables."""

import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import PROJECT_DIR, Server, employee_rows

pytestmark = pytest.mark.integration

# Local state and caches a fresh checkout does not have; .env is the developer's own.
NOT_IN_A_CHECKOUT = (".venv", "build", "data", "reports", ".git", ".env", "*cache*", "*.egg-info")


def readme_block(containing: str) -> str:
    """The README's ```bash block that contains `containing`."""
    blocks = re.findall(r"```bash\n(.*?)```", (PROJECT_DIR / "README.md").read_text(), re.S)
    [block] = [b for b in blocks if containing in b]
    return block


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory, model_tag: str) -> Path:
    """A copy of the project as a new user has it (with this suite's .venv)."""
    root = tmp_path_factory.mktemp("checkout") / "attrition"
    shutil.copytree(PROJECT_DIR, root, ignore=shutil.ignore_patterns(*NOT_IN_A_CHECKOUT))
    (root / ".venv").symlink_to(PROJECT_DIR / ".venv")
    return root


@pytest.fixture(scope="module")
def served(checkout: Path) -> Iterator[Server]:
    """`make serve` with its defaults; -o only stops make from reinstalling the shared .venv."""
    server = Server(
        "service:AttritionService",
        {},
        log=checkout.parent / "make-serve.log",
        command=lambda port: ["make", "-o", ".venv/.installed", "serve", f"PORT={port}"],
        cwd=checkout,
        inherit_env=False,
    )
    yield server
    server.stop()


def terminal(
    checkout: Path, script: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run lines in another terminal: the checkout as working folder, no ATTRITION_ or BENTOML_
    variables, no make."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(checkout.parent)}
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=checkout,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_the_quick_start_lines_work_as_written(checkout: Path, served: Server) -> None:
    script = readme_block(".venv/bin/python -m auth create-user alice").replace(
        "localhost:3000", f"localhost:{served.port}"
    )
    out = terminal(checkout, script)
    assert out.returncode == 0, out.stderr
    assert '"probability":' in out.stdout and '"label":' in out.stdout, out.stdout
    assert (checkout / "data" / "attrition.db").exists()  # the server's default database


def user_lines() -> list[str]:
    """The "Users" block's commands with a concrete name and the optional parts dropped."""
    lines = []
    for line in readme_block("python -m auth list-users").splitlines():
        command = re.sub(r"\s+#.*$", "", line)
        command = re.sub(r"\s*\[[^]]*\]", "", command).replace("NAME", "svc").strip()
        if command:
            lines.append(command)
    return lines


def predict(server: Server, token: str) -> int:
    r = httpx.post(
        f"{server.url}/predict/attrition",
        json=employee_rows(1)[0],
        headers={"Authorization": f"Bearer {token}"},
        timeout=60,
    )
    return r.status_code


def test_every_user_command_works_against_make_serve(checkout: Path, served: Server) -> None:
    lines = user_lines()
    commands = [line.split(" -m auth ")[1].split()[0] for line in lines]
    assert {"create-user", "token", "revoke-tokens", "delete-user"} <= set(commands), commands
    token = ""
    for line, command in zip(lines, commands, strict=True):
        out = terminal(checkout, line, stdin="s3cret-password\n")
        assert out.returncode == 0, f"{line}: {out.stderr}"
        assert "Traceback" not in out.stderr
        if command == "token":  # minted with the secret the server generated
            token = out.stdout.strip()
            assert predict(served, token) == 200
        elif command == "revoke-tokens":  # ended within the server's 5 s user cache
            deadline = time.monotonic() + 30
            while predict(served, token) != 401:
                assert time.monotonic() < deadline, "a revoked token still works"
                time.sleep(1)
    assert token


def test_cli_errors_are_one_line_with_exit_code_2(checkout: Path, served: Server) -> None:
    for line in (
        ".venv/bin/python -m auth token nobody",
        ".venv/bin/python -m auth token svc --ttl soon",
        ".venv/bin/python -m auth create-user 'bad name' --role predict --password-stdin",
        ".venv/bin/python -m auth frobnicate",
    ):
        out = terminal(checkout, line, stdin="s3cret-password\n")
        assert out.returncode == 2, line
        assert out.stderr.count("\n") == 1 and out.stderr.startswith("error: "), out.stderr
