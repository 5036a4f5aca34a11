"""Import rules: persistence's ORM never uses the inference log; the log never the HTTP layer."""

import ast
from pathlib import Path

import pytest

from tests.helpers import PROJECT_DIR

PERSISTENCE = PROJECT_DIR / "persistence"
LOG = PERSISTENCE / "inference_log"
# retention.py applies erasures to the log's lines, so it parses their format; the CLI reaches
# the log's files (waiting records, dead letters).
ORM_MAY_USE_FROM_THE_LOG = {
    "retention.py": {"persistence.inference_log.copytext"},
    "__main__.py": {
        "persistence.inference_log.dead_letters",
        "persistence.inference_log.wal",
        "persistence.inference_log.writer",
    },
}


def imported(path: Path) -> set[str]:
    """Every module `path` imports, at the top or inside a function (`from a import b` as a.b)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_the_rules_see_imports_inside_functions(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from persistence.inference_log import wal\n")
    assert imported(module) == {"persistence.inference_log.wal"}


@pytest.mark.parametrize("path", sorted(PERSISTENCE.glob("*.py")), ids=lambda p: p.name)
def test_the_orm_does_not_use_the_inference_log(path: Path) -> None:
    used = {
        ".".join(name.split(".")[:3])
        for name in imported(path)
        if name.startswith("persistence.inference_log.")
    }
    assert used <= ORM_MAY_USE_FROM_THE_LOG.get(path.name, set())


@pytest.mark.parametrize("path", sorted(LOG.glob("*.py")), ids=lambda p: p.name)
def test_the_inference_log_does_not_use_the_http_layer(path: Path) -> None:
    names = imported(path)
    assert not {n for n in names if n.split(".")[0] in {"api", "auth", "service", "training"}}
