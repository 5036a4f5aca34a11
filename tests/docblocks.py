"""The command blocks of the README and the docs pages, as a reader copies them: what the docs
tests check and the integration tests run (tests/test_docs.py, tests/integration/test_readme_cli.py)."""

import re
from dataclasses import dataclass
from pathlib import Path

from tests.helpers import PROJECT_DIR

README = PROJECT_DIR / "README.md"
DOCS = PROJECT_DIR / "docs"
# Dated results describe the code as it was then (its paths included).
RESULTS = DOCS / "performance" / "results"
FENCE = re.compile(r"^(\s*)```(\w*)")
SKIP = re.compile(r"^\s*<!-- not run by the tests: (.+?) -->\s*$")
COMMAND_LANGUAGES = {"bash", "sh", "shell", "console"}


def doc_files() -> list[Path]:
    return [README, *sorted(DOCS.rglob("*.md"))]


@dataclass(frozen=True)
class Block:
    path: Path
    line: int
    text: str
    why_not_run: str | None  # the reason in the comment above it, for a block no test runs

    def __str__(self) -> str:
        return f"{self.path.relative_to(PROJECT_DIR)}:{self.line}"


def command_blocks() -> list[Block]:
    """Every ```bash (or sh) block of the README and the docs, dedented as a reader copies it."""
    blocks = []
    for path in doc_files():
        lines = path.read_text().splitlines()
        i = 0
        while i < len(lines):
            opening = FENCE.match(lines[i])
            if not opening:
                i += 1
                continue
            indent, language = opening.groups()
            end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
            if language in COMMAND_LANGUAGES:
                body = [line.removeprefix(indent) for line in lines[i + 1 : end]]
                above = next((ln for ln in reversed(lines[:i]) if ln.strip()), "")
                reason = SKIP.match(above)
                blocks.append(
                    Block(path, i + 1, "\n".join(body) + "\n", reason[1] if reason else None)
                )
            i = end + 1
    return blocks


def doc_block(containing: str) -> str:
    """The command block, in the README or a docs page, that holds `containing`. A block shown on
    two pages must be the same text on both."""
    found = [b for b in command_blocks() if containing in b.text]
    assert found, f"no command block in the README or docs/ holds {containing!r}"
    assert len({b.text for b in found}) == 1, (
        f"command blocks holding {containing!r} differ: {', '.join(map(str, found))}"
    )
    return found[0].text
