"""PostgreSQL COPY text format (tab-separated, backslash escapes, \\N for NULL): the format of
the write-ahead files, sent to COPY as it is, and parsed back for SQLite and the commands."""

import re
from typing import Any

NULL = "\\N"
_ESCAPES = str.maketrans({"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"})
_NEEDS_ESCAPE = re.compile(r"[\\\n\r\t]")
_UNESCAPE = re.compile(r"\\(x[0-9a-fA-F]{1,2}|[0-7]{1,3}|.)")
_SIMPLE = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}


def field(value: Any) -> str:
    """One value as COPY text: None as \\N, text escaped, numbers by repr (which round-trips)."""
    if value is None:
        return NULL
    if isinstance(value, str):
        return value.translate(_ESCAPES) if _NEEDS_ESCAPE.search(value) else value
    return repr(value)


def line(values: tuple[Any, ...]) -> str:
    """One row as a line (persistence.inference_log.encode does whole requests faster)."""
    return "\t".join([field(v) for v in values]) + "\n"


def _unescape(match: re.Match[str]) -> str:
    code = match.group(1)
    if code[0] == "x" and len(code) > 1:
        return chr(int(code[1:], 16))
    if code[0] in "01234567":
        return chr(int(code, 8))
    return _SIMPLE.get(code, code)


def parse(text: str) -> list[str | None]:
    """The values of one line (without its newline), as text or None."""
    return [
        None if f == NULL else (_UNESCAPE.sub(_unescape, f) if "\\" in f else f)
        for f in text.split("\t")
    ]
