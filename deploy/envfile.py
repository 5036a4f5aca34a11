"""The .env.example template: every ATTRITION_ setting with its default and its docstring,
generated from settings.py (python -m deploy.envfile > .env.example; a test keeps it current)."""

import ast
import json
import sys
from pathlib import Path

from pydantic import AliasChoices
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from settings import PROJECT_DIR, Settings

HEADER = """\
# Every application setting with its default (generated from settings.py by
# `python -m deploy.envfile > .env.example`; a test fails when they drift). Copy to .env and
# uncomment what you change. Secrets (ATTRITION_JWT_SECRET, ATTRITION_DATABASE_URL) never go in
# git: in production they come from the platform's secret store (see docs/operations/deploy.md).
"""


def docstrings(path: Path = PROJECT_DIR / "settings.py") -> dict[str, str]:
    """The attribute docstrings of the Settings class, by field name."""
    tree = ast.parse(path.read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Settings")
    docs: dict[str, str] = {}
    for field, doc in zip(cls.body, cls.body[1:], strict=False):
        if (
            isinstance(field, ast.AnnAssign)
            and isinstance(field.target, ast.Name)
            and isinstance(doc, ast.Expr)
            and isinstance(doc.value, ast.Constant)
        ):
            docs[field.target.id] = " ".join(str(doc.value.value).split())
    return docs


def variable(name: str, field: FieldInfo) -> str:
    """The environment variable of a setting: ATTRITION_<NAME>, or the standard name it reads
    (the OTEL_* variables; the first when it reads several)."""
    alias = field.validation_alias
    if isinstance(alias, AliasChoices):
        alias = alias.choices[0]
    return alias if isinstance(alias, str) else f"ATTRITION_{name.upper()}"


def render_default(value: object) -> str:
    if value is None or value is PydanticUndefined:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple | list):
        return json.dumps(list(value))
    if isinstance(value, Path):
        return (
            str(value.relative_to(PROJECT_DIR)) if value.is_relative_to(PROJECT_DIR) else str(value)
        )
    return str(value)


def render() -> str:
    docs = docstrings()
    lines = [HEADER]
    for name, field in Settings.model_fields.items():
        lines.append(f"# {docs.get(name, '')}")
        lines.append(f"# {variable(name, field)}={render_default(field.default)}")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(render())
