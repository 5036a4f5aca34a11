"""The command blocks of the README and the docs pages as a new user runs them: `make serve` in
one terminal (development mode, SQLite in data/), the walk-through's CLI, curl and make lines in
another that has none of make's variables; the split topology's two servers. Blocks are found by
a text only they hold, wherever they live (tests/docblocks.py)."""

import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.docblocks import doc_block
from tests.harness import Server
from tests.helpers import PROJECT_DIR, employee_rows
from tests.integration.test_service import batch_histogram

pytestmark = pytest.mark.integration

# Local state and caches a fresh checkout does not have; .env is the developer's own.
NOT_IN_A_CHECKOUT = (".venv", "build", "data", "reports", ".git", ".env", "*cache*", "*.egg-info")


def new_checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the project as a new user has it (with this suite's .venv), and a home whose
    BentoML model store (~/bentoml) is the suite's, where `make serve` would have trained."""
    root = tmp_path_factory.mktemp("checkout") / "attrition"
    shutil.copytree(PROJECT_DIR, root, ignore=shutil.ignore_patterns(*NOT_IN_A_CHECKOUT))
    (root / ".venv").symlink_to(PROJECT_DIR / ".venv")
    (root.parent / "bentoml").symlink_to(os.environ["BENTOML_HOME"])
    return root


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory, model_tag: str) -> Path:
    return new_checkout(tmp_path_factory)


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


# The walk-through's blocks in the order of docs/getting-started.md, each by a line of its own,
# and what its output shows when it worked (curl -s prints error bodies too).
WALK_THROUGH = {
    ".venv/bin/python -m auth create-user alice": ['"probability":', '"label":'],  # quick start
    "/predict/attrition/batch": ['"predictions":[{"index":0,'],
    "python -m persistence erase --employee-ref": ["would delete", "deleted"],
    "python -m persistence dead-letters list": ["dead letters in the database", "still refused"],
    "/predict/history?limit=50": ['"items":[', '"next_cursor":'],
    "explain=true&top_k=3": ['"drivers":[{"feature":'],
    "/predict/attrition/what-if": ['"baseline":{"probability":', '"name":"no overtime"'],
    "localhost:3000/outcomes": ['"recorded":[{"id":'],
    "make report": ['"summary":{', "attrition_monitoring_report_age_seconds "],
    "/model/card": [],
}
SPLIT_BLOCK, USERS_BLOCK, MIGRATION_BLOCK = (
    "make serve-model",
    "python -m auth list-users",
    "revision --autogenerate",
)
# Every block this module runs (tests/test_docs.py checks that the others say why not).
BLOCKS = (*WALK_THROUGH, SPLIT_BLOCK, USERS_BLOCK, MIGRATION_BLOCK)
BLOCK_END = "=== end of block ==="


def test_the_walk_through_works_as_written(checkout: Path, served: Server) -> None:
    """Every block from the quick start to the model card, in one terminal, one after another
    (TOKEN and EMPLOYEE carry over, as they do for a reader)."""
    blocks = [doc_block(key) for key in WALK_THROUGH]
    script = "".join(f"{block}\necho '{BLOCK_END}'\n" for block in blocks)
    # The port of this test's server; -o only stops make from reinstalling the shared .venv.
    script = script.replace("localhost:3000", f"localhost:{served.port}")
    script = script.replace("make report", "make -o .venv/.installed report")
    out = terminal(checkout, script)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    outputs = out.stdout.split(BLOCK_END)
    for (key, shown), output in zip(WALK_THROUGH.items(), outputs, strict=False):
        assert all(text in output for text in shown), f"{key}: {output[-2000:]}"
        assert '"error"' not in output, f"{key}: {output[-2000:]}"
    assert (checkout / "data" / "attrition.db").exists()  # the server's default database
    assert (checkout / "model-card.html").read_text().lstrip().lower().startswith("<!doctype html")


def test_the_split_topology_lines_work_as_written(
    tmp_path_factory: pytest.TempPathFactory, model_tag: str
) -> None:
    """The model service and an entry calling it, each by its line in the docs (on free ports); a
    prediction through the entry is scored by the model server."""
    root = new_checkout(tmp_path_factory)
    lines = [re.sub(r"\s+#.*$", "", ln).strip() for ln in doc_block(SPLIT_BLOCK).splitlines()]
    model_line, entry_line = [
        ln.replace("make ", "make -o .venv/.installed ") for ln in lines if ln
    ]
    assert "PORT=3001" in model_line and "localhost:3001" in entry_line
    model = Server(
        "service:AttritionModel", {}, log=root.parent / "model.log", cwd=root, inherit_env=False,
        command=lambda port: ["bash", "-c", model_line.replace("PORT=3001", f"PORT={port}")],
    )  # fmt: skip
    try:
        entry_command = entry_line.replace("localhost:3001", f"localhost:{model.port}")
        entry = Server(
            "service:AttritionService", {}, log=root.parent / "entry.log", cwd=root,
            inherit_env=False, command=lambda port: ["bash", "-c", f"{entry_command} PORT={port}"],
        )  # fmt: skip
        try:
            out = terminal(root, ".venv/bin/python -m auth create-user bob --role predict "
                                 "--password-stdin && .venv/bin/python -m auth token bob",
                           stdin="s3cret-password\n")  # fmt: skip
            assert out.returncode == 0, out.stderr
            assert predict(entry, out.stdout.split()[-1]) == 200
            _, batches = batch_histogram(httpx.get(f"{model.url}/metrics", timeout=30).text)
            assert batches >= 1, "the model server scored it"
        finally:
            entry.stop()
    finally:
        model.stop()


def user_lines() -> list[str]:
    """The "Users" block's commands with a concrete name and the optional parts dropped."""
    lines = []
    for line in doc_block(USERS_BLOCK).splitlines():
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


def test_the_migration_lines_work_as_written(tmp_path_factory: pytest.TempPathFactory) -> None:
    """On unchanged models they write an empty migration (on a database of the test's own)."""
    import psycopg

    from tests.harness import PG_ADMIN

    root = new_checkout(tmp_path_factory)
    db = f"scratch_{uuid.uuid4().hex[:8]}"
    script = doc_block(MIGRATION_BLOCK).replace("scratch", db)
    script = script.replace("make migrate", "make -o .venv/.installed migrate")
    versions = root / "persistence" / "migrations" / "versions"
    before = set(versions.glob("*.py"))
    try:
        out = terminal(root, script)
        assert out.returncode == 0, out.stdout + out.stderr
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    [new] = set(versions.glob("*.py")) - before
    body = new.read_text()
    assert "what changed" in body and body.count("    pass\n") == 2, body
