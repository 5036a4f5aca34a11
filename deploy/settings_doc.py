"""The settings reference in docs/operations/configuration.md: every ATTRITION_ setting with its
type, default and docstring, generated from settings.py between two markers.

`python -m deploy.settings_doc` rewrites that part of the page (`--check`: exit 1 if it is out of
date); tests/test_docs.py fails when it drifts, as tests/deploy/test_files.py does for .env.example.
"""

import argparse
import sys
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import SecretStr
from pydantic.fields import FieldInfo

from deploy.envfile import docstrings, render_default, variable
from settings import PROJECT_DIR, Settings

PAGE = PROJECT_DIR / "docs" / "operations" / "configuration.md"
BEGIN = "<!-- settings: generated from settings.py by `python -m deploy.settings_doc`; edit the docstrings there -->"
END = "<!-- end of settings -->"
BOUNDS = ((annotated_types.Ge, "≥"), (annotated_types.Gt, ">"), (annotated_types.Le, "≤"))


def type_name(annotation: Any) -> str:
    """A reader's name for a field's type: `bool`, `int`, one of the literal values, a list..."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin in (Union, types.UnionType):
        names = [type_name(a) for a in args if a is not type(None)]
        return " \\| ".join(names)
    if origin is tuple:
        return f"JSON list of {type_name(args[0])}"
    if origin is dict:
        return "JSON object"
    if annotation is SecretStr:
        return "secret"
    if annotation is Path:
        return "path"
    return getattr(annotation, "__name__", str(annotation))


def bounds(field: FieldInfo) -> str:
    parts = [
        f"{sign} {getattr(m, type(m).__name__.lower())}"
        for m in field.metadata
        for kind, sign in BOUNDS
        if isinstance(m, kind)
    ]
    return ", ".join(parts)


def default(field: FieldInfo) -> str:
    value = field.get_default(call_default_factory=True)
    if value is None:
        return "unset"
    if isinstance(value, dict) and not value:
        return "`{}`"
    return f"`{render_default(value)}`"


def cell(text: str) -> str:
    return text.replace("|", "\\|")


def table() -> str:
    docs = docstrings()
    rows = [
        "| variable | type | default | meaning |",
        "| --- | --- | --- | --- |",
    ]
    for name, field in Settings.model_fields.items():
        kind = type_name(field.annotation)
        limit = bounds(field)
        rows.append(
            f"| `{variable(name, field)}` | {kind}{f' ({limit})' if limit else ''} "
            f"| {default(field)} | {cell(docs.get(name, ''))} |"
        )
    return "\n".join(rows)


def updated(page: str) -> str:
    """The page with the part between the markers replaced by the current table."""
    head, begin, rest = page.partition(BEGIN)
    _, end, tail = rest.partition(END)
    if not begin or not end:
        raise ValueError(f"{PAGE.relative_to(PROJECT_DIR)} lacks the markers {BEGIN!r} ... {END!r}")
    return f"{head}{BEGIN}\n\n{table()}\n\n{END}{tail}"


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.settings_doc", description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if the page is out of date")
    args = parser.parse_args()
    page = PAGE.read_text()
    new = updated(page)
    if args.check:
        if new != page:
            print(f"{PAGE}: out of date; run python -m deploy.settings_doc", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
