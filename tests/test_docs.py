"""The README and the docs site: the configuration reference is generated from settings.py, the
README stays short and its links resolve, every command block is run by a test or says why not,
every code path the docs name exists, and the site builds with mkdocs --strict."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from deploy import settings_doc
from tests.docblocks import DOCS, README, RESULTS, command_blocks, doc_block, doc_files
from tests.helpers import PROJECT_DIR


def test_the_configuration_reference_is_generated_from_settings() -> None:
    page = settings_doc.PAGE.read_text()
    assert settings_doc.updated(page) == page, "regenerate: python -m deploy.settings_doc"


def test_the_configuration_reference_lists_every_setting_once() -> None:
    from deploy.envfile import variable
    from settings import Settings

    page = settings_doc.PAGE.read_text()
    for name, field in Settings.model_fields.items():
        assert page.count(f"| `{variable(name, field)}` |") == 1, name


def test_the_generator_refuses_a_page_without_its_markers() -> None:
    with pytest.raises(ValueError, match="markers"):
        settings_doc.updated("# Configuration\n\nno table here\n")


def test_the_readme_is_short() -> None:
    assert len(README.read_text().splitlines()) < 200


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(PROJECT_DIR)))
def test_relative_links_point_at_files(path: Path) -> None:
    """mkdocs --strict checks the pages' links; this covers the README too, which it does not
    build."""
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        assert (path.parent / target.split("#")[0]).exists(), f"{path.name}: {target}"


def blocks_the_tests_run() -> list[str]:
    """The texts by which the integration tests find the blocks they run."""
    from tests.integration.test_container import RUN_BLOCK
    from tests.integration.test_readme_cli import BLOCKS

    return [*BLOCKS, RUN_BLOCK]


def test_every_command_block_is_run_by_a_test_or_says_why_not() -> None:
    keys = blocks_the_tests_run()
    unexplained = [
        str(b)
        for b in command_blocks()
        if b.why_not_run is None and not any(k in b.text for k in keys)
    ]
    assert not unexplained, (
        "command blocks no test runs; run them (tests/integration/test_readme_cli.py) or put "
        f"<!-- not run by the tests: REASON --> on the line above: {unexplained}"
    )


@pytest.mark.parametrize("key", blocks_the_tests_run())
def test_each_block_the_tests_run_is_found(key: str) -> None:
    assert doc_block(key)


def test_the_quick_start_is_the_same_in_the_readme_and_getting_started() -> None:
    key = ".venv/bin/python -m auth create-user alice"
    found = {b.path for b in command_blocks() if key in b.text}
    assert found == {README, DOCS / "getting-started.md"}
    assert doc_block(key)


# Top-level names of this project: a path in backticks that starts with one is a code path.
TOP_LEVEL = {
    "api", "auth", "persistence", "training", "monitoring", "deploy", "loadtests", "tests", "docs",
    ".github", ".ci", "service.py", "settings.py", "configuration.yaml", "bentofile.yaml",
    "pyproject.toml", "Makefile", ".env.example", "mkdocs.yml", "requirements",
}  # fmt: skip


def code_paths() -> dict[str, set[str]]:
    """Every project path (`api/predictor.py`) and module (`python -m loadtests.bench`) the docs
    and the README name, with the files that name it; dated results pages left out."""
    named: dict[str, set[str]] = {}
    for path in doc_files():
        if path.is_relative_to(RESULTS):
            continue
        text = path.read_text()
        where = str(path.relative_to(PROJECT_DIR))
        for span in re.findall(r"`([^`\n]+)`", text):
            token = span.strip().rstrip("/:")
            if re.fullmatch(r"[\w.\-/]+", token) and token.split("/")[0] in TOP_LEVEL:
                named.setdefault(token, set()).add(where)
        for module in re.findall(r"python -m ([a-z_]\w*(?:\.\w+)*)", text):
            named.setdefault("python -m " + module, set()).add(where)
    return named


def exists(name: str) -> bool:
    if name.startswith("python -m "):
        base = PROJECT_DIR / name.removeprefix("python -m ").replace(".", "/")
        return base.with_suffix(".py").is_file() or (base / "__main__.py").is_file()
    return (PROJECT_DIR / name).exists()


def test_every_code_path_the_docs_name_exists() -> None:
    missing = {name: sorted(where) for name, where in code_paths().items() if not exists(name)}
    assert not missing, missing


def test_the_site_builds_strict(tmp_path: Path) -> None:
    """No broken link, anchor or nav entry, and every page in the nav."""
    out = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]


if __name__ == "__main__":  # the list for whoever merges: python -m tests.test_docs
    for name, where in sorted(code_paths().items()):
        print(f"{'ok     ' if exists(name) else 'MISSING'} {name}  ({', '.join(sorted(where))})")
